"""Choosing the cluster and where inference tasks go."""

from __future__ import annotations

import os

import pytest

from scenetag.jobs.cluster import SCHEDULER_ENV, ClusterError, ClusterInfo, gpu_resources, resolve_scheduler


@pytest.mark.parametrize("explicit, env, expected", [
    (None, None, None),                                    # default: LocalCluster
    (None, "10.0.0.5:8786", "tcp://10.0.0.5:8786"),        # environment
    ("tcp://h:1", "tcp://env:2", "tcp://h:1"),             # argument beats environment
    ("local", "tcp://env:2", None),                        # explicitly local beats environment
    (None, "  ", None),
])
def test_scheduler_precedence(explicit, env, expected):
    environ = {} if env is None else {SCHEDULER_ENV: env}
    assert resolve_scheduler(explicit, environ) == expected


def _info(gpu_workers: int) -> ClusterInfo:
    return ClusterInfo(scheduler="tcp://h:1", dashboard=None, local=False, n_workers=2, n_threads=2,
                       gpu_workers=gpu_workers)


@pytest.mark.parametrize("gpu, gpu_workers, expected", [
    (None, 0, None), (None, 1, {"GPU": 1}), (True, 1, {"GPU": 1}), (False, 1, None), (False, 0, None),
])
def test_gpu_resources(gpu, gpu_workers, expected):
    assert gpu_resources(_info(gpu_workers), gpu) == expected


def test_gpu_asked_of_workers_without_one_is_refused():
    with pytest.raises(ClusterError, match=r"none of the 2 workers at tcp://h:1 declares a GPU"):
        gpu_resources(_info(0), True)


def test_gpu_workers_get_larger_classify_tasks_by_default_and_a_given_size_wins():
    from scenetag.jobs.cluster import DEFAULT_CHIPS_PER_TASK, GPU_CHIPS_PER_TASK, chips_per_task_for

    assert chips_per_task_for(None) == DEFAULT_CHIPS_PER_TASK
    assert chips_per_task_for({"GPU": 1}) == GPU_CHIPS_PER_TASK > DEFAULT_CHIPS_PER_TASK
    assert chips_per_task_for({"GPU": 1}, 300) == chips_per_task_for(None, 300) == 300


# --------------------------------------------------------------------------- a LocalCluster through crashes


def test_a_local_cluster_keeps_the_workers_its_nannies_restart():
    """A LocalCluster closes the nanny of a worker that is missing ``lost-worker-timeout`` after it was removed.

    0.5 s stands in for distributed's 15 s: shorter than a restart, as 15 s is
    shorter than a scene that kills each worker that runs it, tried again.
    """
    import signal
    import time

    import dask
    import distributed  # noqa: F401 - its defaults first: leaving the block drops keys it added

    from scenetag.jobs.cluster import connect

    with dask.config.set({"distributed.deploy.lost-worker-timeout": "0.5s"}), \
            connect("local", workers=1, dashboard_address=None) as (client, _):
        [pid] = client.run(os.getpid).values()
        os.kill(pid, signal.SIGKILL)
        deadline = time.time() + 60
        back = {}
        while time.time() < deadline and not back:
            time.sleep(0.2)
            back = {a: p for a, p in client.run(os.getpid).items() if p != pid} if client.scheduler_info()["workers"] else {}
        time.sleep(1.0)  # past the stand-in timeout, counted from the removal
        assert back, "the nanny's restarted worker never came back"
        assert len(client.cluster.workers) == 1 and len(client.scheduler_info()["workers"]) == 1


def test_a_batch_whose_cluster_has_no_worker_left_stops_with_a_cluster_error(tmp_path, tiny_model, monkeypatch):
    from distributed import LocalCluster

    from scenetag.jobs import cluster as cluster_module
    from scenetag.jobs.batch import run_batch
    from scenetag.jobs.options import RunOptions
    from scenetag.model.backends import create_predictor
    from tests.conftest import real_scene

    monkeypatch.setattr(cluster_module, "NO_WORKERS_TIMEOUT", "1s")
    with cluster_module.local_cluster_settings(), \
            LocalCluster(n_workers=0, processes=True, dashboard_address=None) as cluster:  # its workers all gone
        with pytest.raises(ClusterError, match=r"the cluster has had no worker for 1 s, so the prepare task of "
                                               r".*landsat8_rgb16\.tif could not run: its workers died"):
            run_batch([real_scene("landsat8_rgb16.tif")], tmp_path / "out", create_predictor(tiny_model),
                      RunOptions(), scheduler=cluster.scheduler_address)
    assert not list((tmp_path / "out").glob("*.gpkg"))
