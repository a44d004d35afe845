"""Choosing the cluster and where inference tasks go."""

from __future__ import annotations

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
