"""The failure policy of a scene's tasks: per-scene by inclusion, retried only when it may go away."""

from __future__ import annotations

import errno
import shutil

import pytest

from scenetag.errors import (BandError, DiskFullError, GeoreferenceError, MissingDependencyError, ModelLoadError,
                             ModelSpecError, OptionError, OutputError, OutputExistsError, SceneReadError,
                             ScenetagError)
from scenetag.jobs.cluster import ClusterError
from scenetag.jobs.executors import InProcessExecutor
from scenetag.jobs.failures import JobFailure, SceneFailure, WorkerDiedError, run_task
from scenetag.jobs.models import LocalModel
from scenetag.jobs.options import RunOptions
from scenetag.jobs.report import SceneRecord
from scenetag.jobs.runner import run_scenes
from scenetag.model.backends import create_predictor
from tests.conftest import real_scene


def _raise(exc: Exception):
    raise exc


def _transient(message: str) -> SceneReadError:
    try:
        raise OSError(errno.EIO, "Input/output error")
    except OSError as cause:
        try:
            raise SceneReadError(message) from cause
        except SceneReadError as exc:
            return exc


def test_task_returns_scene_errors_and_raises_the_rest():
    assert run_task("prepare", lambda a, b: a + b, 1, 2) == 3
    failure = run_task("classify", _raise, SceneReadError("scene 'x.tif' is corrupt"))
    assert isinstance(failure, SceneFailure) and failure.stage == "classify"
    assert str(failure) == "scene 'x.tif' is corrupt"
    # A failed strip reaches the writer, which passes it on without writing.
    written = []
    assert run_task("write", lambda *tables: written.append(tables), "table", failure) is failure
    assert written == []
    # Model errors and anything else are not about one scene: they stop the job.
    stop = run_task("classify", _raise, ModelLoadError("model changed"))
    assert isinstance(stop, JobFailure) and isinstance(stop.error, ModelLoadError)
    assert run_task("write", lambda *tables: written.append(tables), "table", stop) is stop and written == []
    with pytest.raises(ZeroDivisionError):
        run_task("write", lambda: 1 / 0)


@pytest.mark.parametrize("error", [
    SceneReadError("scene 'a.tif' is corrupt"), GeoreferenceError("no geotransform"), BandError("bands 1,2"),
    OutputError("output 'a.gpkg' cannot be written"), OutputExistsError("output exists"),
    WorkerDiedError("its worker died 3 times"),
])
def test_per_scene_failures_are_recorded_and_not_retried(error):
    failure = run_task("prepare", _raise, error)
    assert isinstance(failure, SceneFailure) and failure.error is error
    assert not failure.retry  # a corrupt file, a missing geotransform... fail the same way again


@pytest.mark.parametrize("error", [
    OptionError("--stride 0"), ClusterError("no scheduler"), MissingDependencyError("torch is not installed"),
    ModelSpecError("spec"), DiskFullError("disk full"), ScenetagError("something else"), RuntimeError("a bug"),
])
def test_everything_else_stops_the_job(error):
    if isinstance(error, ScenetagError):  # returned whole, for the runner to raise
        assert run_task("prepare", _raise, error).error is error
    else:
        with pytest.raises(type(error)):  # a bug: raised where it happens, with its traceback
            run_task("prepare", _raise, error)


def test_only_transient_io_is_retried():
    assert run_task("prepare", _raise, _transient("scene 'a.tif' could not be read")).retry


# ----------------------------------------------------------------------------- the runner


@pytest.fixture(scope="module")
def model(tiny_model):
    return LocalModel(create_predictor(tiny_model))


def _records(tmp_path, *scenes):
    return [SceneRecord(str(s), str(tmp_path / f"{s.stem}.gpkg")) for s in scenes]


def test_runner_retries_transient_failures_only(model, tmp_path, monkeypatch):
    import scenetag.jobs.runner as runner

    good = real_scene("landsat7_rgb_byte.tif")
    flaky = shutil.copy(good, tmp_path / "flaky.tif")
    rpcs = real_scene("no_geotransform_rpcs.tif")
    calls = {"flaky": 0, "rpcs": 0}
    real_prepare = runner.prepare_scene

    def prepare(scene, *args):
        for name in calls:
            if name in scene:
                calls[name] += 1
        if "flaky" in scene and calls["flaky"] == 1:
            raise _transient(f"scene {scene!r} could not be read (a network hiccup)")
        return real_prepare(scene, *args)

    monkeypatch.setattr(runner, "prepare_scene", prepare)
    from pathlib import Path
    records = _records(tmp_path, Path(flaky), rpcs, good)
    with InProcessExecutor() as ex:
        run_scenes(ex, records, model, RunOptions(), retries=2, overwrite=True)
    by = {r.scene: r for r in records}
    assert by[str(flaky)].status == "ok" and by[str(flaky)].attempts == 2  # transient: tried again, then ok
    assert by[str(rpcs)].status == "failed" and by[str(rpcs)].attempts == 1  # can't change: not retried
    assert "no geotransform" in by[str(rpcs)].error
    assert by[str(good)].status == "ok"
    assert calls == {"flaky": 2, "rpcs": 1}


@pytest.mark.parametrize("error", [OptionError("--stride 0 is out of range"), DiskFullError("disk full"),
                                   ClusterError("the scheduler went away")])
def test_runner_stops_at_errors_that_are_not_about_one_scene(model, tmp_path, monkeypatch, error):
    import scenetag.jobs.runner as runner

    calls = []

    def prepare(scene, *args):
        calls.append(scene)
        raise error

    monkeypatch.setattr(runner, "prepare_scene", prepare)
    good = real_scene("landsat7_rgb_byte.tif")
    records = _records(tmp_path, good, real_scene("landsat8_rgb16.tif"))
    with InProcessExecutor() as ex, pytest.raises(type(error)):
        run_scenes(ex, records, model, RunOptions(), retries=3, overwrite=True)
    assert calls == [str(good)]  # not retried, and no other scene was tried
    assert list(tmp_path.iterdir()) == []
