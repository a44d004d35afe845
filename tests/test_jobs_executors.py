"""The executors the scene job runs on, and that every path is that one job."""

from __future__ import annotations

import threading

import pytest
from distributed import LocalCluster

import scenetag.jobs.runner as runner
from scenetag.errors import OutputExistsError, SceneReadError
from scenetag.jobs.executors import InProcessExecutor
from scenetag.jobs.options import RunOptions
from tests.conftest import real_scene


def test_in_process_tasks_run_once_their_inputs_are_done():
    with InProcessExecutor() as ex:
        order = []
        a = ex.submit("a", lambda: order.append("a") or 2)
        side = ex.submit("side", lambda: threading.current_thread().name, side=True)
        b = ex.submit("b", lambda x, y: order.append("b") or x * 10 + len(y), a, side)
        ex.watch(b)
        done = list(ex.completed())
    assert done == [b] and b.result() == 20 + len(side.result())
    assert order == ["a", "b"]
    assert side.result().startswith("scene-side")  # the side task ran beside, on its own thread
    # the others ran on the caller's thread (so Ctrl-C interrupts them)
    with InProcessExecutor() as ex:
        fut = ex.submit("t", lambda: threading.current_thread() is threading.main_thread())
        ex.watch(fut)
        assert [f.result() for f in ex.completed()] == [True]


def test_in_process_task_whose_input_failed_fails_with_it():
    def boom():
        raise ValueError("bad input")

    with InProcessExecutor() as ex:
        a = ex.submit("a", boom)
        b = ex.submit("b", lambda x: x, a)
        ex.watch(b)
        [done] = ex.completed()
    with pytest.raises(ValueError, match="bad input"):
        done.result()


@pytest.fixture(scope="module")
def thread_cluster():
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as c:
        yield c


@pytest.mark.parametrize("where", ["in-process", "cluster"])
def test_an_output_that_appears_during_the_run_is_not_replaced(where, predictor, thread_cluster, tmp_path,
                                                               monkeypatch):
    """run and run --scheduler are the same job: both refuse, at the write, a file that appeared meanwhile."""
    scene = real_scene("landsat7_rgb_byte.tif")
    out = tmp_path / "out.gpkg"
    real = runner.classify_strip

    def classify_then_someone_writes(*args):
        table = real(*args)
        out.write_bytes(b"another run's output")
        return table

    monkeypatch.setattr(runner, "classify_strip", classify_then_someone_writes)
    from scenetag.api import run_scene

    scheduler = thread_cluster.scheduler_address if where == "cluster" else "local"
    with pytest.raises(OutputExistsError, match="exists"):
        run_scene(scene, out, model=predictor, scheduler=scheduler)
    assert out.read_bytes() == b"another run's output"
    assert [p.name for p in tmp_path.iterdir()] == ["out.gpkg"]  # no temporary file left


def test_every_path_runs_the_one_scene_job(predictor, thread_cluster, tmp_path, monkeypatch):
    """run, run --scheduler and batch all go through jobs.runner.run_scenes; only the executor differs."""
    from scenetag.api import run_batch, run_scene

    seen = []
    real = runner.run_scenes

    def spy(executor, *args, **kwargs):
        seen.append(type(executor).__name__)
        return real(executor, *args, **kwargs)

    monkeypatch.setattr(runner, "run_scenes", spy)
    import scenetag.jobs.batch as batch

    monkeypatch.setattr(batch, "run_scenes", spy)
    scene = real_scene("landsat7_rgb_byte.tif")
    a = run_scene(scene, tmp_path / "a.gpkg", model=predictor, scheduler="local")
    b = run_scene(scene, tmp_path / "b.gpkg", model=predictor, scheduler=thread_cluster.scheduler_address)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / scene.name).symlink_to(scene)
    report = run_batch([tmp_path / "in"], tmp_path / "batch", model=predictor,
                       scheduler=thread_cluster.scheduler_address)
    assert seen == ["InProcessExecutor", "DaskExecutor", "DaskExecutor"]
    assert report.succeeded and report.scenes[0].chips == a.n_chips_classified == b.n_chips_classified
    frame = a.chips()
    assert len(frame) == a.n_chips_classified and frame.crs is not None


def test_a_scene_failure_is_raised_by_run(predictor, tmp_path):
    from scenetag.api import run_scene

    with pytest.raises(SceneReadError, match="does not exist"):
        run_scene(tmp_path / "missing.tif", tmp_path / "o.gpkg", model=predictor, scheduler="local")


def test_options_as_keywords_or_object(predictor, tmp_path):
    from scenetag.api import run_scene

    scene = real_scene("landsat7_rgb_byte.tif")
    a = run_scene(scene, tmp_path / "a.gpkg", model=predictor, scheduler="local", overlap=0.5, edge="skip")
    b = run_scene(scene, tmp_path / "b.gpkg", model=predictor, scheduler="local",
                  options=RunOptions(stride=predictor.spec.chip_size // 2, edge="skip"))
    assert a.n_chips_total == b.n_chips_total > 0
    with pytest.raises(TypeError, match="not both"):
        run_scene(scene, tmp_path / "c.gpkg", model=predictor, options=RunOptions(), edge="skip")


def test_a_retry_after_a_worker_died_past_the_write_reports_what_was_written(predictor, tmp_path, monkeypatch):
    """The outputs were written, then the worker died before saying so: the retry finds them current, and the
    scene is reported as classified (with its counts), not as skipped."""
    from distributed import KilledWorker

    from scenetag.jobs.models import LocalModel
    from scenetag.jobs.report import SceneRecord, Status

    real = runner.write_scene
    calls = []

    def write_then_die(*args, **kwargs):
        result = real(*args, **kwargs)
        calls.append(result)
        if len(calls) == 1:
            raise KilledWorker("scenetag-write-x", "tcp://127.0.0.1:1", 1)
        return result

    monkeypatch.setattr(runner, "write_scene", write_then_die)
    scene = real_scene("landsat7_rgb_byte.tif")
    record = SceneRecord(str(scene), str(tmp_path / "o.gpkg"))
    with InProcessExecutor() as ex:
        runner.run_scenes(ex, [record], LocalModel(predictor), RunOptions(), skip_current=True, overwrite=True,
                          retries=1)
    assert len(calls) == 1 and record.attempts == 2
    assert record.status == Status.OK and record.chips == calls[0].n_chips_classified > 0


def test_a_cluster_without_workers_is_named_in_the_log_while_the_batch_waits(monkeypatch, caplog):
    """A cluster that is not ours waits for workers to join: the batch says so, and again when they are back."""
    import logging
    import time

    from distributed import Client

    import scenetag.jobs.executors as executors

    monkeypatch.setattr(executors, "NO_WORKERS_POLL_S", 0.05)
    monkeypatch.setattr(executors, "NO_WORKERS_WARN_S", 0.3)
    with LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as cluster, Client(cluster) as client:
        ex = executors.DaskExecutor(client)
        futs = [ex.submit("t", lambda: 42), ex.submit("slow", lambda: time.sleep(1.0) or 43)]
        for fut in futs:
            ex.watch(fut)
        timer = threading.Timer(2.0, cluster.scale, args=(1,))  # a worker joins later
        timer.start()
        with caplog.at_level(logging.WARNING, logger="scenetag.jobs.executors"):
            t0 = time.time()
            assert sorted(f.result() for f in ex.completed()) == [42, 43]
        timer.join()
        ex.close()
    assert time.time() - t0 >= 1.5  # it did wait for the worker
    said = [r.getMessage() for r in caplog.records]
    assert any("has had no worker for" in m and "waits for workers to join" in m for m in said), said
    assert any("workers again" in m for m in said), said
