"""Batch on real Dask clusters (LocalCluster, 2 worker processes) with real scenes and a real model.

Nothing here is mocked: the scenes are the shared real scenes (copied, so one
can be changed), the model is the tiny ONNX model, and the workers are
processes that really die when a test kills them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
from click.testing import CliRunner
from distributed import Client, LocalCluster, SchedulerPlugin, WorkerPlugin

from scenetag.jobs.batch import REPORT_NAME, run_batch, run_scene_on_cluster
from scenetag.jobs.shipping import model_loads
from scenetag.jobs.cluster import ClusterError
from scenetag.jobs.lock import LOCK_NAME, OutputLock
from scenetag.jobs.options import RunOptions
from scenetag.jobs.runner import run_scene
from scenetag.model.backends import create_predictor
from tests.conftest import ROOT, real_scene

SCENES = ("landsat7_rgb_byte.tif", "drone_rgba_alpha.tif", "landsat8_rgb16.tif")
#: Small enough that the larger scenes are split into several strips.
CHIPS_PER_TASK = 40


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as c:
        yield c


def chips(path: Path):
    return pyogrio.read_dataframe(path, layer="chips", read_geometry=False)


def runs(path: Path):
    return pyogrio.read_dataframe(path, layer="runs", read_geometry=False)


def assert_same_chips(batch_out: Path, run_out: Path) -> None:
    """Same chips (grid positions and windows), probabilities within 1e-6, same tags."""
    a, b = chips(batch_out), chips(run_out)
    assert len(a) == len(b) > 0
    for col in ("row", "col", "x_off", "y_off", "width", "height", "valid_fraction", "tags"):
        assert (a[col].to_numpy() == b[col].to_numpy()).all(), col
    probs = [c for c in a.columns if c.startswith("p_")]
    assert probs
    np.testing.assert_allclose(a[probs].to_numpy(), b[probs].to_numpy(), rtol=0, atol=1e-6)
    assert runs(batch_out)["signature"][0] == runs(run_out)["signature"][0]


@pytest.fixture(scope="module")
def reference(scenes_dir, predictor, tmp_path_factory):
    """``run_scene`` (the path of ``cli.py run``) on each scene, in this process."""
    folder = tmp_path_factory.mktemp("run")
    return {name: run_scene(scenes_dir / name, folder / name.replace(".tif", ".gpkg"), predictor).output
            for name in SCENES}


def _batch(scenes_dir, out, predictor, cluster, options=RunOptions(), **kw):
    return run_batch([scenes_dir], out, predictor, options, scheduler=cluster.scheduler_address,
                     chips_per_task=CHIPS_PER_TASK, **kw)


@pytest.fixture(scope="module")
def first_batch(scenes_dir, predictor, cluster, tmp_path_factory):
    out = tmp_path_factory.mktemp("batch")
    # One client at a time in this process (see test_batch_survives_a_killed_worker).
    with Client(cluster) as client:
        before = client.run(model_loads)
    report = _batch(scenes_dir, out, predictor, cluster)
    with Client(cluster) as client:
        after = client.run(model_loads)
    return out, report, before, after


def test_batch_matches_run_for_each_scene(first_batch, reference, predictor):
    out, report, before, after = first_batch
    assert report.succeeded
    assert [Path(s.scene).name for s in report.scenes] == sorted(SCENES)  # a folder, in name order
    assert {s.status for s in report.scenes} == {"ok"}
    assert max(s.strips for s in report.scenes) > 2  # big scenes really were split
    for name in SCENES:
        assert_same_chips(out / name.replace(".tif", ".gpkg"), Path(reference[name]))
    # Many classify tasks, but the model was built at most once per worker process.
    for worker, loads in after.items():
        assert len(loads) - len(before[worker]) <= 1
    assert sum(len(a) for a in after.values()) > sum(len(b) for b in before.values())


def test_rerun_skips_everything(first_batch, scenes_dir, predictor, cluster):
    out, *_ = first_batch
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*.gpkg")}
    report = _batch(scenes_dir, out, predictor, cluster)
    assert report.succeeded
    assert [s.status for s in report.scenes] == ["skipped"] * len(SCENES)
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.gpkg")} == mtimes
    # The report on disk is this run's.
    saved = json.loads((out / REPORT_NAME).read_text())
    assert saved["counts"] == {"ok": 0, "empty": 0, "skipped": len(SCENES), "failed": 0}
    assert saved["succeeded"] is True
    assert [s["status"] for s in saved["scenes"]] == ["skipped"] * len(SCENES)
    assert all(s["reason"] == "output up to date (same signature)" for s in saved["scenes"])
    assert not list(out.glob(".*.tmp.*"))


def test_changes_rerun_only_affected_scenes(first_batch, scenes_dir, predictor, cluster, tmp_path):
    # Copies of the scenes and of the first batch's outputs, since one scene is changed.
    # (A first batch of its own: outputs copied from first_batch record the other folder's scenes, and
    # a changed scene of the same name from another folder is refused, see test_a_different_scene_...)
    scenes_dir = Path(shutil.copytree(scenes_dir, tmp_path / "scenes"))
    out = tmp_path / "out"
    assert _batch(scenes_dir, out, predictor, cluster).succeeded
    status = lambda report: {Path(s.scene).name: s.status for s in report.scenes}  # noqa: E731

    # Options that do not change results (batch size, readers) change nothing.
    report = _batch(scenes_dir, out, predictor, cluster, RunOptions(batch_size=7, readers=1))
    assert set(status(report).values()) == {"skipped"}

    # A scene whose content changed is redone; the others are not.
    changed = scenes_dir / "landsat8_rgb16.tif"
    with rasterio.open(changed, "r+") as dst:
        block = dst.read(1, window=((0, 8), (0, 8)))
        dst.write(block + 1, 1, window=((0, 8), (0, 8)))
    report = _batch(scenes_dir, out, predictor, cluster)
    assert status(report) == {"landsat7_rgb_byte.tif": "skipped", "drone_rgba_alpha.tif": "skipped",
                              "landsat8_rgb16.tif": "ok"}

    # A result-affecting option redoes every scene, and the outputs record it.
    report = _batch(scenes_dir, out, predictor, cluster, RunOptions(min_valid=0.9))
    assert set(status(report).values()) == {"ok"}
    assert '"min_valid": 0.9' in runs(out / "drone_rgba_alpha.gpkg")["options"][0]

    # --force redoes scenes that are up to date.
    report = _batch(scenes_dir, out, predictor, cluster, RunOptions(min_valid=0.9), force=True)
    assert set(status(report).values()) == {"ok"}


# --------------------------------------------------------------------------- outputs never lost


def _small_batch(inputs, out, predictor, cluster, options=RunOptions(), **kw):
    return run_batch(inputs, out, predictor, options, scheduler=cluster.scheduler_address, **kw)


def _by_name(report):
    return {Path(s.scene).name: s for s in report.scenes}


def test_a_different_scene_with_the_same_name_does_not_replace_the_output(make_raster, predictor, cluster,
                                                                            tmp_path):
    night1, night2 = tmp_path / "night1", tmp_path / "night2"
    night1.mkdir(), night2.mkdir()
    first = make_raster("night1/scene.tif", seed=1)
    second = make_raster("night2/scene.tif", seed=2)  # the same name, another scene
    make_raster("night2/other.tif", seed=3)
    out = tmp_path / "out"
    assert _small_batch([night1], out, predictor, cluster).succeeded
    kept = (out / "scene.gpkg").read_bytes()

    report = _small_batch([night2], out, predictor, cluster)
    scene = _by_name(report)["scene.tif"]
    assert scene.status == "failed" and not report.succeeded
    assert scene.error == (f"output {str(out / 'scene.gpkg')!r} was made from scene {str(first)!r}, not "
                           f"{str(second)!r}: use another --out-dir, or --force to replace it")
    assert (out / "scene.gpkg").read_bytes() == kept  # the first night's output, byte for byte
    assert _by_name(report)["other.tif"].status == "ok"  # one refused scene costs one scene
    assert not list(out.glob(".*.tmp.*"))

    # The same scene again is still up to date, and --force replaces on purpose.
    assert _by_name(_small_batch([night1], out, predictor, cluster))["scene.tif"].status == "skipped"
    report = _small_batch([night2], out, predictor, cluster, force=True)
    assert _by_name(report)["scene.tif"].status == "ok"
    assert runs(out / "scene.gpkg")["scene_path"][0] == str(second)


def test_batch_refuses_an_output_that_is_the_scene(make_raster, predictor, cluster, tmp_path):
    from rasterio.shutil import copy as copy_raster

    folder = tmp_path / "scenes"
    folder.mkdir()
    scene = folder / "scene.gpkg"  # a GeoPackage raster, whose output name in its own folder is itself
    copy_raster(make_raster("src.tif"), scene, driver="GPKG")
    before = scene.read_bytes()
    report = _small_batch([scene], folder, predictor, cluster, force=True)
    [record] = report.scenes
    assert record.status == "failed"
    assert "is the scene" in record.error and "destroy the input" in record.error
    assert scene.read_bytes() == before


def test_a_removed_probability_raster_is_rebuilt(make_raster, predictor, cluster, tmp_path):
    folder = tmp_path / "scenes"
    folder.mkdir()
    make_raster("scenes/a.tif", seed=1)
    make_raster("scenes/b.tif", seed=2)
    out = tmp_path / "out"
    options = RunOptions(raster=True)
    assert _small_batch([folder], out, predictor, cluster, options).succeeded
    kept = (out / "b_prob.tif").read_bytes()
    (out / "a_prob.tif").unlink()

    report = _small_batch([folder], out, predictor, cluster, options)
    assert {n: s.status for n, s in _by_name(report).items()} == {"a.tif": "ok", "b.tif": "skipped"}
    with rasterio.open(out / "a_prob.tif") as src:
        assert src.count == len(predictor.spec.labels)
        assert src.tags()["scenetag_signature"] == runs(out / "a.gpkg")["signature"][0]
    assert (out / "b_prob.tif").read_bytes() == kept


def test_uri_special_characters_in_folder_and_scene_names(make_raster, predictor, cluster, tmp_path):
    folder = tmp_path / "a#b?c%d 1"
    folder.mkdir()
    scene = make_raster("a#b?c%d 1/x#1 %20?.tif")
    out = tmp_path / "out#?%"
    report = _small_batch([folder], out, predictor, cluster)
    assert [s.status for s in report.scenes] == ["ok"], report.scenes[0].error
    gpkg = out / "x#1 %20?.gpkg"
    assert runs(gpkg)["scene_path"][0] == str(scene)
    mtime = gpkg.stat().st_mtime_ns

    report = _small_batch([folder], out, predictor, cluster)  # the provenance is read back: up to date
    assert [(s.status, s.reason) for s in report.scenes] == [("skipped", "output up to date (same signature)")]
    assert gpkg.stat().st_mtime_ns == mtime


def test_run_on_a_cluster_matches_run(scenes_dir, reference, predictor, cluster, tmp_path):
    out = tmp_path / "one.gpkg"
    result = run_scene_on_cluster(scenes_dir / "drone_rgba_alpha.tif", out, predictor, RunOptions(),
                                  scheduler=cluster.scheduler_address, chips_per_task=CHIPS_PER_TASK)
    assert result.status == "ok" and result.output == str(out)
    assert_same_chips(out, Path(reference["drone_rgba_alpha.tif"]))


def test_tta_on_a_cluster_matches_tta_here(scenes_dir, tiny_model, cluster, tmp_path):
    """The workers build their predictor from the shipped spec, whose TTA they apply as run does."""
    d4 = create_predictor(tiny_model, tta="d4")
    scene = scenes_dir / "drone_rgba_alpha.tif"
    here = run_scene(scene, tmp_path / "here.gpkg", d4).output
    out = tmp_path / "cluster.gpkg"
    run_scene_on_cluster(scene, out, d4, RunOptions(), scheduler=cluster.scheduler_address,
                         chips_per_task=CHIPS_PER_TASK)
    assert_same_chips(out, Path(here))
    plain = run_scene(scene, tmp_path / "plain.gpkg", create_predictor(tiny_model)).output
    probs = [c for c in chips(out).columns if c.startswith("p_")]
    assert np.abs(chips(out)[probs].to_numpy() - chips(Path(plain))[probs].to_numpy()).max() > 1e-4
    assert json.loads(runs(out)["model_spec"][0])["tta"] == "d4"


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """The tiny network as a torch checkpoint (with its spec), as training writes one."""
    from scenetag.model.training.checkpoint import save_checkpoint
    from tests.model_fixtures import small_model, tiny_spec

    spec = tiny_spec()
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", small_model(spec, seed=1), spec)


def test_a_torch_checkpoint_runs_on_the_workers_in_the_precision_asked(scenes_dir, tiny_checkpoint, cluster,
                                                                     tmp_path):
    """The torch backend is the fast GPU path (bf16, CUDA graphs): the workers get the checkpoint's bytes and
    run it as ``run`` does, in the precision asked (bf16 here, on the CPU; fp16 is read here as bf16)."""
    import scenetag.api as api

    scene = scenes_dir / "drone_rgba_alpha.tif"
    got = {}
    for precision in ("fp32", "bf16"):
        here = run_scene(scene, tmp_path / f"here_{precision}.gpkg",
                         create_predictor(tiny_checkpoint, precision=precision)).output
        report = api.run_batch([scene], tmp_path / f"batch_{precision}", model=tiny_checkpoint,
                               precision=precision, scheduler=cluster.scheduler_address,
                               chips_per_task=CHIPS_PER_TASK)
        assert report.succeeded, report.summary()
        out = Path(report.scenes[0].output)
        assert runs(out)["model_sha256"][0] == report.model["sha256"]
        got[precision] = (chips(out), chips(Path(here)))
    probs = [c for c in got["fp32"][0].columns if c.startswith("p_")]
    fp32, fp32_here = (t[probs].to_numpy() for t in got["fp32"])
    bf16, bf16_here = (t[probs].to_numpy() for t in got["bf16"])
    np.testing.assert_allclose(fp32, fp32_here, rtol=0, atol=1e-5)
    # bf16 on the workers is run's bf16, not fp32: autocast changes probabilities by up to a few 1e-3.
    assert np.abs(bf16 - bf16_here).max() < np.abs(bf16 - fp32).max() / 4


def test_fp16_on_cpu_workers_is_refused_before_any_work(scenes_dir, tiny_checkpoint, tmp_path):
    import scenetag.api as api
    from scenetag.errors import OptionError

    with pytest.raises(OptionError, match="fp16 needs a CUDA device"):
        api.run_batch([scenes_dir], tmp_path / "out", model=tiny_checkpoint, precision="fp16", device="cpu",
                      scheduler="tcp://127.0.0.1:1")  # nothing listens there: refused before connecting
    assert not (tmp_path / "out").exists()


def test_a_worker_builds_a_torch_predictor_from_the_shipped_bytes(tiny_checkpoint):
    import torch

    from scenetag.hashing import file_sha256
    from scenetag.jobs.models import ShippedModel
    from scenetag.jobs.shipping import _engine
    from scenetag.model.backends.torch_backend import TorchPredictor

    sha = file_sha256(tiny_checkpoint)
    spec = create_predictor(tiny_checkpoint).spec
    threads = torch.get_num_threads()
    try:
        built = _engine(ShippedModel("/nowhere/tiny.pt", sha, spec, "cpu", "auto", "bf16"),
                        tiny_checkpoint.read_bytes())
        assert torch.get_num_threads() == 1  # one a task, as ONNX Runtime on a worker
    finally:
        torch.set_num_threads(threads)  # the setting is this test process's
    assert isinstance(built, TorchPredictor) and built.precision == "bf16"
    assert built.sha256 == sha and built.path == "/nowhere/tiny.pt"  # read from the bytes: no file there


def test_a_model_file_no_worker_can_load_is_refused_before_shipping(tmp_path):
    from types import SimpleNamespace

    from scenetag.errors import ModelLoadError
    from scenetag.jobs.shipping import model_bytes

    engine = tmp_path / "model.plan"
    engine.write_bytes(b"a TensorRT engine")
    with pytest.raises(ModelLoadError, match=r"a cluster runs model files \(\.onnx, \.pt.*model\.plan' is not one"):
        model_bytes(SimpleNamespace(path=str(engine), sha256="0" * 64))


def test_gpu_asked_of_a_cluster_without_gpus_is_refused(scenes_dir, predictor, cluster, tmp_path):
    with pytest.raises(ClusterError, match="declares a GPU"):
        _batch(scenes_dir, tmp_path, predictor, cluster, gpu=True)


class TaskPlaces(SchedulerPlugin):
    """Records the worker and resource restrictions of each task the scheduler sends out."""

    name = "task-places"

    def __init__(self, scheduler) -> None:
        self.scheduler = scheduler
        self.places: dict[str, tuple[str, dict | None]] = {}

    def transition(self, key, start, finish, *args, **kwargs):
        if finish == "processing":
            ts = self.scheduler.tasks[key]
            self.places[str(key)] = (ts.processing_on.name, ts.resource_restrictions)


def test_inference_lands_on_gpu_workers(scenes_dir, predictor, tmp_path):
    """On a cluster of one CPU and one GPU worker, every classify task runs on the GPU worker.

    The GPU is declared (``--resources GPU=1``), not real: it is what Dask schedules by.
    """
    from distributed import Scheduler, SpecCluster, Worker

    workers = {"cpu": {"cls": Worker, "options": {"nthreads": 1}},
               "gpu": {"cls": Worker, "options": {"nthreads": 1, "resources": {"GPU": 1}}}}
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": ":0"}}
    with SpecCluster(workers=workers, scheduler=scheduler) as mixed:
        places = TaskPlaces(mixed.scheduler)
        mixed.scheduler.add_plugin(places)
        report = run_batch([scenes_dir], tmp_path, predictor, RunOptions(), scheduler=mixed.scheduler_address,
                           chips_per_task=CHIPS_PER_TASK)
    assert report.succeeded and {s.status for s in report.scenes} == {"ok"}
    classify = {k: v for k, v in places.places.items() if k.startswith("scenetag_classify")}
    assert len(classify) == sum(s.strips for s in report.scenes) > 2
    assert all(place == ("gpu", {"GPU": 1}) for place in classify.values()), classify
    others = [v for k, v in places.places.items() if not k.startswith("scenetag_classify")]
    assert others and all(restriction is None for _, restriction in others)  # hashing, writing: anywhere


# --------------------------------------------------------------------------- a worker dies


class KillOnce(WorkerPlugin):
    """Kills its worker process when the first classify task starts, once per marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def transition(self, key, start, finish, **kwargs):
        if finish == "executing" and "scenetag_classify" in str(key):
            try:
                fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            os.kill(os.getpid(), signal.SIGKILL)


def test_batch_survives_a_killed_worker(scenes_dir, reference, predictor, tmp_path):
    marker = tmp_path / "killed"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as c:
        # One client at a time: the batch's own client must be the only one waiting on futures.
        with Client(c) as client:
            pids = set(client.run(os.getpid).values())
            client.register_plugin(KillOnce(str(marker)), name="kill-once")
        out = tmp_path / "out"
        report = run_batch([scenes_dir / n for n in SCENES], out, predictor, RunOptions(),
                           scheduler=c.scheduler_address, chips_per_task=CHIPS_PER_TASK)
        with Client(c) as client:
            client.wait_for_workers(2, timeout=60)
            pids_after = set(client.run(os.getpid).values())
    killed = int(marker.read_text())
    assert killed in pids and killed not in pids_after  # a worker process really died mid-job
    assert report.succeeded
    assert {s.status for s in report.scenes} == {"ok"}
    for name in SCENES:
        assert_same_chips(out / name.replace(".tif", ".gpkg"), Path(reference[name]))
    assert not list(out.glob(".*.tmp.gpkg*"))


class CrashOnScene(WorkerPlugin):
    """Makes the classify step of one scene take its worker down (``os._exit``), every time, like a segfault.

    It replaces ``classify_strip`` in the worker's copy of the scene job: the
    tasks name the function by module, so the workers run this one.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def setup(self, worker):
        import scenetag.jobs.scene_job as scene_job

        real, name = scene_job.classify_strip, self.name

        def classify_strip(plan, *args, **kwargs):
            if plan.info.path.endswith(name):
                os._exit(1)
            return real(plan, *args, **kwargs)

        scene_job.classify_strip = classify_strip


def test_a_scene_that_kills_its_worker_fails_and_the_others_go_on(scenes_dir, reference, predictor, tmp_path):
    import dask

    from scenetag.jobs.cluster import local_cluster_settings

    crash = tmp_path / "crash.tif"
    shutil.copy(scenes_dir / SCENES[0], crash)
    good = [scenes_dir / n for n in SCENES[:2]]
    # Under our LocalCluster's settings: without them, distributed closed the nannies of workers that
    # this scene kept killing, until none was left and the batch waited for ever (1 run in 5 or so).
    with local_cluster_settings(), dask.config.set({"distributed.scheduler.allowed-failures": 1}), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as c:
        with Client(c) as client:
            client.register_plugin(CrashOnScene("crash.tif"), name="crash-on-scene")
        out = tmp_path / "out"
        report = run_batch([crash, *good], out, predictor, RunOptions(), scheduler=c.scheduler_address,
                           chips_per_task=CHIPS_PER_TASK, retries=2)
    by_name = {Path(s.scene).name: s for s in report.scenes}
    failed = by_name["crash.tif"]
    # Tried again (a scene beside the culprit on a dying worker dies with it, and deserves a retry).
    assert failed.status == "failed" and failed.attempts == 3
    assert "its worker died 2 times" in failed.error
    assert not report.succeeded
    for path in good:
        assert by_name[path.name].status == "ok", by_name[path.name].error
        assert_same_chips(out / path.name.replace(".tif", ".gpkg"), Path(reference[path.name]))
    assert not (out / "crash.gpkg").exists() and not list(out.glob(".*.tmp.*"))
    written = json.loads((out / REPORT_NAME).read_text())
    assert written["counts"]["failed"] == 1 and "worker died" in written["scenes"][0]["error"]


# --------------------------------------------------------------------------- the command


def corrupt_copy(make_raster, name="corrupt.tif") -> Path:
    """A tiled, compressed GeoTIFF whose middle third is overwritten: it opens, but blocks fail."""
    path = make_raster(name, width=400, height=400, tiled=True, compress="deflate")
    data = bytearray(path.read_bytes())
    n = len(data)
    data[n // 3: 2 * n // 3] = np.random.default_rng(1).integers(0, 255, 2 * n // 3 - n // 3, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def test_cli_corrupt_scene_is_recorded_and_the_others_succeed(scenes_dir, tiny_model, make_raster, tmp_path):
    from cli import main

    bad = corrupt_copy(make_raster)
    # A real uint16 scene cut short: its stretch sample meets the missing blocks (a raw GDAL error once).
    cut = tmp_path / "cut16.tif"
    data = real_scene("landsat8_rgb16.tif").read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    report_path = tmp_path / "report.json"
    log_file = tmp_path / "batch.log"
    args = ["batch", str(scenes_dir), str(bad), str(cut), "--out-dir", str(out), "-m", str(tiny_model),
            "--workers", "2", "--dashboard-address", ":0", "--chips-per-task", str(CHIPS_PER_TASK),
            "--retries", "1", "--report", str(report_path), "--log-file", str(log_file), "--no-progress"]
    result = CliRunner().invoke(main, args)

    assert result.exit_code == 1, result.output
    assert "2 of 5 scenes failed" in result.output
    assert "Dask dashboard: http://" in result.output  # stderr, mixed in by CliRunner
    import json

    report = json.loads(report_path.read_text())
    by_name = {Path(s["scene"]).name: s for s in report["scenes"]}
    assert report["counts"] == {"ok": 3, "empty": 0, "skipped": 0, "failed": 2}
    for name in ("corrupt.tif", "cut16.tif"):
        failed = by_name[name]
        # A corrupt file fails the same way every time: recorded at once, not tried again.
        assert failed["status"] == "failed" and failed["attempts"] == 1
        assert "could not be read" in failed["error"] and name in failed["error"]
        assert "truncated or corrupt" in failed["error"]
    assert not (out / "cut16.gpkg").exists()
    for name in SCENES:
        assert by_name[name]["status"] == "ok" and by_name[name]["chips"] > 0
        assert len(chips(out / name.replace(".tif", ".gpkg"))) == by_name[name]["chips"]
    assert not (out / "corrupt.gpkg").exists()
    assert sorted(p.name for p in out.iterdir()) == sorted(n.replace(".tif", ".gpkg") for n in SCENES)
    assert "corrupt.tif failed" in log_file.read_text()


def test_full_disk_stops_the_batch_cleanly(scenes_dir, tiny_model, tmp_path, small_tmpfs):
    from cli import main

    out = small_tmpfs("600k")
    st = os.statvfs(out)
    (out / "filler").write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 40_000))
    report_path = tmp_path / "report.json"
    args = ["batch", *(str(scenes_dir / n) for n in SCENES), "--out-dir", str(out), "-m", str(tiny_model),
            "--workers", "1", "--dashboard-address", ":0", "--retries", "2", "--report", str(report_path),
            "--no-progress"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "is full" in errors[0], result.output
    assert "Traceback" not in result.output
    report = json.loads(report_path.read_text())
    # Not a per-scene failure: no scene is recorded as failed for it, none was tried again.
    assert report["counts"]["failed"] == 0 and report["counts"]["ok"] == 0
    assert all(s["attempts"] <= 1 for s in report["scenes"])
    assert sorted(p.name for p in out.iterdir()) == ["filler"]  # no output, no temporary, the lock released


def test_two_batches_on_one_folder_one_refuses(scenes_dir, tiny_model, tmp_path):
    from cli import main

    out = tmp_path / "out"
    out.mkdir()
    many = tmp_path / "many.txt"  # enough work that the first batch still runs when the second starts
    many.write_text("\n".join(str(scenes_dir / n) for n in SCENES) + "\n")
    first = subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), "batch", str(many), "--out-dir", str(out), "-m", str(tiny_model),
         "--workers", "1", "--dashboard-address", ":0", "--no-progress"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:  # the lock file holds the first batch's pid once it is locked
            text = (out / LOCK_NAME).read_text() if (out / LOCK_NAME).exists() else ""
            if f'"pid": {first.pid}' in text:
                break
            assert first.poll() is None, first.communicate()
            time.sleep(0.05)
        second = CliRunner().invoke(main, ["batch", str(many), "--out-dir", str(out), "-m", str(tiny_model),
                                           "--no-progress"])
        still_running = first.poll() is None
        stdout, stderr = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert still_running, "the first batch finished before the second started: the test proved nothing"
    assert second.exit_code == 3, second.output
    assert "is in use by another batch run" in second.output and f"pid {first.pid}" in second.output
    assert first.returncode == 0, stderr
    assert "3 scenes: 3 ok" in stdout
    assert not (out / LOCK_NAME).exists()


def test_cli_batch_stops_on_a_model_that_returns_logits(make_raster, tmp_path):
    """A model error is about every scene: the batch stops in one line, and no scene is written as if right."""
    from cli import main
    from tests.model_fixtures import export_constant_model

    model = export_constant_model(tmp_path / "logits.onnx", [-3.0, 2.5, 0.1, 0.2, 7.0])
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    for i in range(2):
        make_raster(f"scenes/s{i}.tif", width=200, height=140, seed=i)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["batch", str(scenes), "--out-dir", str(out), "-m", str(model),
                                       "--workers", "1", "--dashboard-address", ":0", "--no-progress"])
    assert result.exit_code == 1, result.output
    assert "probably returns logits" in result.output and "Traceback" not in result.output
    assert not list(out.glob("*.gpkg"))
def test_batch_refuses_a_scene_over_the_chip_limit_and_does_the_others(tiny_model, make_raster, tmp_path):
    """--max-chips on batch: the scene over it is recorded as failed, with the fix; the others are written."""
    import json

    from cli import main

    scenes = tmp_path / "scenes"
    scenes.mkdir()
    make_raster("scenes/big.tif")  # 300 x 200 px: 20 chips of 64 px
    make_raster("scenes/fits.tif", width=200, height=200)  # 16 chips
    out, report_path = tmp_path / "out", tmp_path / "report.json"
    result = CliRunner().invoke(main, ["batch", str(scenes), "--out-dir", str(out), "-m", str(tiny_model),
                                       "--workers", "1", "--dashboard-address", ":0", "--max-chips", "19",
                                       "--report", str(report_path), "--no-progress"])
    assert result.exit_code == 1, result.output
    report = {Path(s["scene"]).name: s for s in json.loads(report_path.read_text())["scenes"]}
    assert report["fits.tif"]["status"] == "ok" and report["fits.tif"]["chips"] == 16
    assert report["big.tif"]["status"] == "failed"
    assert "would classify 20 chips, more than the limit of 19: pass --max-chips 20" in report["big.tif"]["error"]
    assert sorted(p.name for p in out.iterdir()) == ["fits.gpkg"]
# --------------------------------------------------------------------------- one-line errors


def _read_only(small_tmpfs) -> Path:
    where = small_tmpfs("64k")
    if subprocess.run(["mount", "-o", "remount,ro", str(where)], capture_output=True).returncode != 0:
        pytest.skip("cannot remount the tmpfs read-only here")
    return where


def _one_error_line(result) -> str:
    assert "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def test_garbage_scheduler_address_is_one_line(scenes_dir, tiny_model, tmp_path, monkeypatch):
    from cli import main

    monkeypatch.setenv("SCENETAG_SCHEDULER", "::::")
    result = CliRunner().invoke(main, ["batch", str(scenes_dir), "--out-dir", str(tmp_path / "out"),
                                       "-m", str(tiny_model), "--no-progress"])
    assert result.exit_code == 1 and not isinstance(result.exception, ValueError), result.output
    line = _one_error_line(result)
    assert "'::::'" in line and "SCENETAG_SCHEDULER" in line


def test_new_out_dir_on_a_read_only_file_system_is_one_line(scenes_dir, tiny_model, small_tmpfs):
    from cli import main

    ro = _read_only(small_tmpfs)
    result = CliRunner().invoke(main, ["batch", str(scenes_dir), "--out-dir", str(ro / "new"),
                                       "-m", str(tiny_model), "--no-progress"])
    assert result.exit_code == 1, result.output
    assert "cannot be created" in _one_error_line(result) and str(ro / "new") in result.output


def test_unwritable_report_is_refused_before_any_work(scenes_dir, tiny_model, tmp_path, small_tmpfs):
    from cli import main

    ro = _read_only(small_tmpfs)
    out = tmp_path / "out"
    t0 = time.time()
    result = CliRunner().invoke(main, ["batch", str(scenes_dir), "--out-dir", str(out), "-m", str(tiny_model),
                                       "--report", str(ro / "report.json"), "--no-progress"])
    assert result.exit_code == 1, result.output
    assert "--report" in _one_error_line(result) and "cannot be written" in result.output
    assert "Dask" not in result.output and time.time() - t0 < 10  # no cluster was started: no work done
    assert not any(p.suffix == ".gpkg" for p in out.iterdir())


def test_sigterm_stops_a_batch_cleanly(tiny_model, make_raster, tmp_path):
    """SIGTERM mid-batch: exit 143, no temporary output, the folder's lock free, no worker left behind."""
    import signal
    import subprocess
    import sys
    import time

    from tests.cli_helpers import alive, descendants

    drop = tmp_path / "drop"
    drop.mkdir()
    for i in range(2):
        make_raster(f"drop/s{i}.tif", width=3000, height=3000, seed=i)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "batch", str(drop), "-d", str(out),
                             "--model", str(tiny_model), "--no-progress", "--workers", "1",
                             "--dashboard-address", ":0"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 90
    for line in proc.stderr:  # the cluster is up and the scenes are submitted right after
        if "Dask dashboard" in line or "Dask LocalCluster" in line or time.time() > deadline:
            break
    time.sleep(3)
    assert proc.poll() is None, "the batch finished before the signal: the test proved nothing"
    kids = descendants(proc.pid)
    assert kids, "no worker process"
    os.kill(proc.pid, signal.SIGTERM)
    rest = proc.stderr.read()
    assert proc.wait(timeout=90) == 143, rest
    assert "SIGTERM" in rest and "Traceback" not in rest
    assert not list(out.glob(".*.tmp.*"))
    with OutputLock(out):  # the lock was released
        pass
    deadline = time.time() + 20
    while alive(kids) and time.time() < deadline:
        time.sleep(0.2)
    assert alive(kids) == []
