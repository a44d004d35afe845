"""The batch's parts that need no cluster: inputs, the lock, the scheduler choice, the report."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path

import pytest

from scenetag.jobs.batch import SceneFailure, _task, gpu_resources
from scenetag.jobs.cluster import SCHEDULER_ENV, ClusterError, ClusterInfo, resolve_scheduler
from scenetag.jobs.inputs import InputError, expand_inputs, output_paths
from scenetag.jobs.lock import LOCK_NAME, OutputLock
from scenetag.jobs.report import BatchReport, SceneRecord
from scenetag.errors import LockedError, ModelLoadError, SceneReadError


def only_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


# --------------------------------------------------------------------------- inputs


def test_inputs_files_folders_globs_and_lists(tmp_path):
    a = _touch(tmp_path / "drop" / "a.tif")
    b = _touch(tmp_path / "drop" / "b.TIFF")
    _touch(tmp_path / "drop" / "notes.md")
    c = _touch(tmp_path / "deep" / "x" / "c.tif")
    d = _touch(tmp_path / "listed" / "d.tif")
    lst = tmp_path / "listed" / "scenes.txt"
    lst.write_text("# tonight\nd.tif\n\n" + str(a) + "   # again, deduplicated\n")

    scenes = expand_inputs([tmp_path / "drop", str(tmp_path / "deep" / "**" / "*.tif"), lst,
                            str(tmp_path / "missing.tif")])

    assert scenes == [a, b, c, d, tmp_path / "missing.tif"]
    assert all(p.is_absolute() for p in scenes)


def test_inputs_glob_without_matches_gives_nothing(tmp_path, caplog):
    assert expand_inputs([str(tmp_path / "*.tif")]) == []
    assert "matches no files" in caplog.text


def test_inputs_list_that_includes_itself_is_refused(tmp_path):
    lst = tmp_path / "loop.lst"
    lst.write_text("loop.lst\n")
    with pytest.raises(InputError, match="includes itself"):
        expand_inputs([lst])


def test_outputs_are_named_after_scenes_and_clashes_refused(tmp_path):
    scenes = [tmp_path / "x" / "s1.tif", tmp_path / "y" / "s2.tif"]
    assert output_paths(scenes, tmp_path / "out") == [tmp_path / "out" / "s1.gpkg", tmp_path / "out" / "s2.gpkg"]
    with pytest.raises(InputError, match=r"would both be written to .*[sS]1\.gpkg") as err:
        output_paths(scenes + [tmp_path / "z" / "S1.tif"], tmp_path / "out")
    assert str(scenes[0]) in str(err.value) and str(tmp_path / "z" / "S1.tif") in str(err.value)


# --------------------------------------------------------------------------- lock


def test_lock_refuses_a_second_holder_with_exit_code_3(tmp_path):
    with OutputLock(tmp_path) as first:
        assert first.held
        holder = json.loads((tmp_path / LOCK_NAME).read_text())
        assert holder["pid"] == os.getpid()
        with pytest.raises(LockedError, match=r"in use by another batch run \(pid \d+") as err:
            OutputLock(tmp_path).acquire()
        assert err.value.exit_code == 3
    assert not (tmp_path / LOCK_NAME).exists()
    with OutputLock(tmp_path):  # free again
        pass


def _hold_lock_and_die(folder: str) -> None:
    OutputLock(folder).acquire()
    os._exit(0)  # dies holding it: no release, the file stays


def test_lock_left_by_a_dead_run_is_taken_over(tmp_path, caplog):
    proc = multiprocessing.get_context("spawn").Process(target=_hold_lock_and_die, args=(str(tmp_path),))
    proc.start()
    proc.join(60)
    stale = json.loads((tmp_path / LOCK_NAME).read_text())
    assert stale["pid"] == proc.pid

    with OutputLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert f"left by pid {proc.pid}" in caplog.text


# --------------------------------------------------------------------------- scheduler choice


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


# --------------------------------------------------------------------------- report and signature


def test_report_json_and_summary(tmp_path):
    report = BatchReport(started_at="t", seconds=12.0, scenes=[
        SceneRecord("/a/one.tif", "/o/one.gpkg", "ok", chips=10, seconds=2.0),
        SceneRecord("/a/two.tif", "/o/two.gpkg", "skipped"),
        SceneRecord("/a/bad.tif", "/o/bad.gpkg", "failed", error="scene '/a/bad.tif' is corrupt"),
    ])
    path = report.write(tmp_path / "r.json")
    assert only_files(tmp_path) == ["r.json"]  # no temporary file left beside it
    data = json.loads(path.read_text())
    assert data["counts"] == {"ok": 1, "empty": 0, "skipped": 1, "failed": 1}
    assert data["succeeded"] is False
    assert data["scenes"][2]["error"] == "scene '/a/bad.tif' is corrupt"
    text = report.summary()
    assert text.splitlines()[0].startswith("3 scenes: 1 ok, 0 empty, 1 skipped, 1 failed")
    assert "bad.tif" in text and "is corrupt" in text


def test_leftovers_of_a_killed_writer_are_swept(tmp_path):
    from scenetag.jobs.batch import sweep_leftovers

    old = tmp_path / ".scene.gpkg.0123456789ab.tmp.gpkg"
    old.write_bytes(b"half")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    fresh = tmp_path / ".other.gpkg.0123456789ab.tmp.gpkg"
    fresh.write_bytes(b"being written")
    kept = tmp_path / "scene.gpkg"
    kept.write_bytes(b"")
    assert sweep_leftovers(tmp_path) == [old]
    assert fresh.exists() and kept.exists() and not old.exists()


# --------------------------------------------------------------------------- the failure policy of a task


def _raise(exc: Exception):
    raise exc


def test_task_returns_scene_errors_and_raises_the_rest():
    assert _task("prepare", lambda a, b: a + b, 1, 2) == 3
    failure = _task("classify", _raise, SceneReadError("scene 'x.tif' is corrupt"))
    assert isinstance(failure, SceneFailure) and failure.stage == "classify"
    assert str(failure) == "scene 'x.tif' is corrupt"
    # A failed strip reaches the writer, which passes it on without writing.
    written = []
    assert _task("write", lambda *tables: written.append(tables), "table", failure) is failure
    assert written == []
    # Model errors and anything else are not about one scene: raised.
    with pytest.raises(ModelLoadError):
        _task("classify", _raise, ModelLoadError("model changed"))
    with pytest.raises(ZeroDivisionError):
        _task("write", lambda: 1 / 0)


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
