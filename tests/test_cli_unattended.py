"""``cli.py run`` unattended: concurrent runs, bad models and scenes, limits, full disks, signals and kills.

What docs/reliability.md promises, checked through the command line and real processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyogrio
import pytest
from click.testing import CliRunner

from cli import main
from tests.cli_helpers import alive, corrupt_copy, invoke, only_files, wait_for_readers
from tests.conftest import ROOT, real_scene


def test_two_runs_to_one_output_at_once_exactly_one_wins(tiny_model, tmp_path):
    """Both pass the up-front check; the atomic rename lets only one of them give the output its name."""
    scene = real_scene("landsat7_rgb_byte.tif")
    out = tmp_path / "o.gpkg"
    cmd = [sys.executable, str(ROOT / "cli.py"), "run", str(scene), "-o", str(out), "-m", str(tiny_model),
           "--no-progress", "-q"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    try:
        results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    codes = sorted(rc for rc, _, _ in results)
    assert codes == [0, 1], results
    [(_, _, loser_err)] = [r for r in results if r[0] == 1]
    assert "o.gpkg" in loser_err and "--overwrite" in loser_err and "Traceback" not in loser_err
    assert [line for line in loser_err.splitlines() if line.startswith("Error:")] == \
        [loser_err.strip().splitlines()[-1]], loser_err  # one line, the last
    [(_, winner_out, _)] = [r for r in results if r[0] == 0]
    assert str(out) in winner_out
    # The output is one whole GeoPackage, the winner's, and nothing temporary is left.
    assert len(pyogrio.read_dataframe(out, layer="chips")) > 50
    assert len(pyogrio.read_dataframe(out, layer="runs", read_geometry=False)) == 1
    assert only_files(tmp_path) == ["o.gpkg"]


@pytest.mark.parametrize("how", ["same path", "scene is a symlink to the output", "output is a hard link"])
def test_overwrite_never_writes_over_the_scene(tiny_model, make_raster, tmp_path, how):
    from rasterio.shutil import copy as copy_raster

    scene = tmp_path / "scene.gpkg"  # a GeoPackage raster: a valid scene and a valid output name
    copy_raster(make_raster("src.tif"), scene, driver="GPKG")
    before = scene.read_bytes()
    given, out = scene, scene
    if how == "scene is a symlink to the output":
        given = tmp_path / "link.gpkg"
        given.symlink_to(scene)
    elif how == "output is a hard link":
        out = tmp_path / "hard.gpkg"
        os.link(scene, out)
    res = invoke("run", given, "-o", out, "--model", tiny_model, "--overwrite", "--no-progress")
    assert res.exit_code == 1, res.output
    assert "is the scene" in res.output and "destroy the input" in res.output and "Traceback" not in res.output
    assert scene.read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp.*"))
@pytest.mark.parametrize("outputs, seen", [
    ([-3.0, 2.5, 0.1, 0.2, 7.0], "probably returns logits; export it with a sigmoid"),
    ([0.1, float("nan"), 0.2, 0.3, 0.4], "non-finite"),
    ([0.1, 0.2, float("inf"), 0.3, float("-inf")], "non-finite"),
])
@pytest.mark.parametrize("extra", [(), ("--raster",), ("--reader", "processes")])
def test_model_outputs_that_are_not_probabilities_are_a_model_error(tmp_path, make_raster, outputs, seen, extra):
    """Logits, NaN and inf stop the run with a message saying what was seen; nothing is written."""
    from tests.model_fixtures import TINY_LABELS, export_constant_model

    model = export_constant_model(tmp_path / "bad.onnx", outputs)
    scene = make_raster("s.tif", width=200, height=140)
    out = tmp_path / "o.gpkg"
    res = invoke("run", scene, "-o", out, "--model", model, "--no-progress", *extra)
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    assert seen in res.output
    bad = [lab for lab, v in zip(TINY_LABELS, outputs) if not 0 <= v <= 1]
    assert f"labels affected: {', '.join(bad)}" in res.output
    assert "in a batch of" in res.output
    assert only_files(tmp_path) == ["bad.onnx", "s.tif"]  # no output, no temporary


def test_model_outputs_that_are_probabilities_pass(tmp_path, make_raster):
    """0 and 1 are probabilities: the check refuses only what lies outside [0, 1]."""
    from tests.model_fixtures import export_constant_model

    model = export_constant_model(tmp_path / "edge.onnx", [0.0, 1.0, 0.5, 0.0, 1.0])
    out = tmp_path / "o.gpkg"
    res = invoke("run", make_raster("s.tif", width=200, height=140), "-o", out, "--model", model, "--no-progress")
    assert res.exit_code == 0, res.output
    chips = pyogrio.read_dataframe(out, layer="chips")
    assert len(chips) > 0 and (chips["p_cloudy"] == 1.0).all() and (chips["p_clear"] == 0.0).all()


def test_spec_chip_size_that_differs_from_the_model_is_refused_before_reading(tmp_path, make_raster):
    """--spec with chip_size 64 for a model fixed at 128 px: one line at load, no ONNX Runtime traceback."""
    from tests.model_fixtures import export_constant_model, tiny_spec

    model = export_constant_model(tmp_path / "m128.onnx", [0.5] * 5, tiny_spec(chip_size=128), input_hw=(128, 128))
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(tiny_spec(chip_size=64).to_json())
    scene = make_raster("s.tif", width=300, height=300)
    res = invoke("run", scene, "-o", tmp_path / "o.gpkg", "--model", model, "--spec", spec_file, "--no-progress")
    assert res.exit_code == 1, res.output
    assert "takes 128x128 pixel chips but its spec says chip_size 64" in res.output
    assert "Traceback" not in res.output and "onnxruntime" not in res.output.lower()
    assert not (tmp_path / "o.gpkg").exists()


def test_constant_16_bit_scene_is_recorded_as_without_contrast(tiny_model, make_raster, tmp_path):
    """Every valid pixel one value: the run says so in runs.warnings, in its result line and in the log."""
    import json

    data = np.full((3, 140, 150), 1234, np.uint16)
    data[:, :10] = 0  # some nodata: the valid pixels are what counts
    scene = make_raster("flat.tif", data, nodata=0)
    out = tmp_path / "flat.gpkg"
    res = CliRunner().invoke(main, ["run", str(scene), "-o", str(out), "--model", str(tiny_model), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "warning: no contrast: every band of the scene has one value between its p2 and p98" in res.stdout
    assert "band 1: 1234" in res.stdout
    assert "no contrast" in res.stderr  # logged too
    runs = pyogrio.read_dataframe(out, layer="runs")
    warnings = json.loads(runs.warnings[0])
    assert len(warnings) == 1 and warnings[0].startswith("no contrast: every band")
    # A scene with contrast records no warning.
    res = invoke("run", make_raster("u16.tif", dtype="uint16"), "-o", tmp_path / "u16.gpkg", "--model", tiny_model,
                 "--no-progress")
    assert res.exit_code == 0 and "warning" not in res.stdout
    assert json.loads(pyogrio.read_dataframe(tmp_path / "u16.gpkg", layer="runs").warnings[0]) == []


@pytest.mark.parametrize("reader", ["threads", "processes"])
def test_small_fully_valid_scene_is_one_chip_not_empty(tmp_path, make_raster, reader):
    """150x150 px with 256-px chips: status ok, one chip, valid fraction 1.0, in both readers."""
    from tests.model_fixtures import export_constant_model, tiny_spec

    model = export_constant_model(tmp_path / "m256.onnx", [0.1, 0.9, 0.2, 0.3, 0.4], tiny_spec(chip_size=256))
    out = tmp_path / "small.gpkg"
    res = invoke("run", make_raster("small.tif", width=150, height=150), "-o", out, "--model", model,
                 "--reader", reader, "--no-progress")
    assert res.exit_code == 0, res.output
    assert ": ok, 1 chip classified" in res.stdout
    chips = pyogrio.read_dataframe(out, layer="chips")
    assert len(chips) == 1 and chips.valid_fraction[0] == 1.0 and (chips.width[0], chips.height[0]) == (150, 150)
    assert pyogrio.read_dataframe(out, layer="runs").status[0] == "ok"


def test_small_scene_without_enough_valid_pixels_says_what_happened(tmp_path, make_raster):
    from tests.model_fixtures import export_constant_model, tiny_spec

    model = export_constant_model(tmp_path / "m256.onnx", [0.5] * 5, tiny_spec(chip_size=256))
    data = np.random.default_rng(0).integers(1, 255, (3, 120, 150)).astype("uint8")
    data[:, :, :100] = 0
    out = tmp_path / "small.gpkg"
    res = invoke("run", make_raster("small.tif", data, nodata=0), "-o", out, "--model", model, "--no-progress")
    assert res.exit_code == 0, res.output
    runs = pyogrio.read_dataframe(out, layer="runs")
    assert runs.status[0] == "empty"
    assert runs.reason[0] == ("the scene is 150x120 pixels, smaller than one 256-pixel chip, and fewer than 50% "
                              "of its pixels are valid (nodata or mask)")
def test_a_run_over_the_chip_limit_is_refused_up_front(tiny_model, tmp_path):
    """Stride 16 on a 100 000 px scene (39 million chips) is refused in one line, before anything is read or written."""
    from tests.test_jobs_scene_job import huge_vrt

    scene = huge_vrt(tmp_path / "huge.vrt")
    out = tmp_path / "huge.gpkg"
    res = CliRunner().invoke(main, ["run", str(scene), "-o", str(out), "--model", str(tiny_model), "--stride", "16",
                                    "--no-progress"])
    assert res.exit_code == 1, res.output
    n = ((100_000 - 64) // 16 + 1) ** 2
    *logged, error = res.output.strip().splitlines()
    assert error == (f"Error: stride 16 on a 100000x100000 scene would classify {n:,} chips, more than the limit of "
                     f"10,000,000: pass --max-chips {n} to allow more (or use a larger stride)")
    assert all(line.startswith("INFO ") for line in logged), logged  # the error is the one line that is not a log
    assert any(f"huge: {n:,} chips to classify (6247 x 6247, stride 16, chip 64 px)" in line for line in logged)
    assert "Traceback" not in res.output
    assert only_files(tmp_path) == ["huge.vrt"]  # nothing written, not even a temporary


def test_max_chips_sets_the_limit_and_the_count_is_logged(tiny_model, make_raster, tmp_path):
    scene = make_raster("small.tif")  # 300 x 200 px: 5 x 4 = 20 chips of 64 px (shifted edges)
    out = tmp_path / "small.gpkg"
    res = invoke("run", scene, "-o", out, "--model", tiny_model, "--max-chips", 19, "--no-progress")
    assert res.exit_code == 1
    assert "would classify 20 chips, more than the limit of 19: pass --max-chips 20" in res.output
    assert not out.exists()
    res = invoke("run", scene, "-o", out, "--model", tiny_model, "--max-chips", 20, "--no-progress")
    assert res.exit_code == 0, res.output
    assert "small: 20 chips to classify (4 x 5, stride 64, chip 64 px)" in res.output  # INFO, on stderr
    assert len(pyogrio.read_dataframe(out, layer="chips")) == 20
    # The limit bounds the run, not its result: it is not part of the signature batch compares.
    from scenetag.jobs.options import RunOptions

    assert "max_chips" not in RunOptions(max_chips=5).result_affecting()
    with pytest.raises(Exception, match="max_chips must be a whole number >= 1, got 0"):
        RunOptions(max_chips=0)
def truncated_uint16(tmp_path):
    """A real uint16 scene cut short: it opens, and its stretch sample meets the missing blocks."""
    src = real_scene("landsat8_rgb16.tif")
    return corrupt_copy(src, tmp_path / "landsat8_cut.tif", 0.5)


def test_truncated_uint16_scene_fails_in_one_line(tiny_model, tmp_path):
    scene = truncated_uint16(tmp_path)
    before = scene.read_bytes()
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "run", str(scene), "-o", str(out / "c.gpkg"),
                           "--model", str(tiny_model), "--no-progress", "-q"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "landsat8_cut.tif" in errors[0] and "truncated or corrupt" in errors[0]
    assert only_files(out) == []
    assert scene.read_bytes() == before


def fill(folder, leave: int) -> None:
    """Fill ``folder``'s file system but ``leave`` bytes."""
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    (folder / "filler").write_bytes(b"\0" * max(0, free - leave))


def test_full_disk_is_one_line_and_keeps_the_previous_output(tiny_model, tmp_path, small_tmpfs):
    disk = small_tmpfs("600k")
    previous = disk / "o.gpkg"
    previous.write_bytes(b"last night's output")
    fill(disk, 40_000)
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "run", str(real_scene("landsat8_rgb16.tif")),
                           "-o", str(previous), "--model", str(tiny_model), "--overwrite", "--no-progress", "-q"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "is full" in errors[0] and "o.gpkg" in errors[0], proc.stderr
    assert previous.read_bytes() == b"last night's output"
    assert only_files(disk) == ["filler", "o.gpkg"]  # no temporary, no journal left


def start_long_run(scene, out, model, *extra):
    """``cli.py run`` in a process of its own, once it is classifying (its model is loaded)."""
    import time

    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "run", str(scene), "-o", str(out),
                             "--model", str(model), "--no-progress", *map(str, extra)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    for line in proc.stderr:  # the model loads after the scene is planned: classification is next
        if "loaded" in line or time.time() > deadline:
            break
    time.sleep(0.5)
    assert proc.poll() is None, "the run finished before the signal: the test proved nothing"
    return proc


def test_sigterm_stops_run_cleanly(tiny_model, make_raster, tmp_path):
    import signal

    scene = make_raster("big.tif", width=4800, height=4800)  # reading lasts long enough to signal it
    out = tmp_path / "out"
    out.mkdir()
    proc = start_long_run(scene, out / "big.gpkg", tiny_model, "--reader", "processes")
    import time

    kids = wait_for_readers(proc)  # signal once a reader runs
    assert proc.poll() is None, "the run finished before the signal: the test proved nothing"
    os.kill(proc.pid, signal.SIGTERM)
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 143, rest
    assert "terminated (SIGTERM)" in rest and "Traceback" not in rest
    assert only_files(out) == []  # no output, no temporary
    deadline = time.time() + 10
    while alive(kids) and time.time() < deadline:
        time.sleep(0.2)
    assert alive(kids) == []  # its readers and their fork server are gone


WRITER = """
import sys, time
from scenetag.atomic import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"half-written")
    print(tmp, flush=True)
    time.sleep(120)
"""


def test_run_after_kill_9_removes_dead_writers_temporaries(tiny_model, tmp_path):
    import signal

    out = tmp_path / "o.gpkg"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / name)], cwd=ROOT,
                                stdout=subprocess.PIPE, text=True) for name in ("o.gpkg", "other.gpkg")]
    try:
        dead_tmp, live_tmp = (Path(w.stdout.readline().strip()) for w in writers)
        os.kill(writers[0].pid, signal.SIGKILL)  # kill -9: no clean-up runs
        writers[0].wait(timeout=10)
        assert dead_tmp.exists() and live_tmp.exists()
        res = invoke("run", real_scene("landsat7_rgb_byte.tif"), "-o", out, "--model", tiny_model, "--no-progress")
        assert res.exit_code == 0, res.output
        assert not dead_tmp.exists()  # its writer is dead: removed
        assert live_tmp.read_bytes() == b"half-written"  # a live writer's is kept
        assert only_files(tmp_path) == sorted(["o.gpkg", live_tmp.name])
    finally:
        for w in writers:
            w.kill()


def test_kill_9_with_reader_processes_leaves_no_reader_and_no_segment(tiny_model, make_raster, tmp_path):
    import signal
    import time

    scene = make_raster("big.tif", width=4800, height=4800)  # reading lasts long enough to signal it
    proc = start_long_run(scene, tmp_path / "big.gpkg", tiny_model, "--reader", "processes")
    tree = wait_for_readers(proc)
    assert list(Path("/dev/shm").glob(f"scenetag_{proc.pid}_*"))  # the feed's block, named by its owner
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    deadline = time.time() + 5
    while alive(tree) and time.time() < deadline:
        time.sleep(0.1)
    assert alive(tree) == []  # the readers died with their parent, within seconds
    small = make_raster("small.tif", width=300, height=300)
    res = invoke("run", small, "-o", tmp_path / "small.gpkg", "--model", tiny_model, "--reader", "processes",
                 "--no-progress")
    assert res.exit_code == 0, res.output
    assert not list(Path("/dev/shm").glob(f"scenetag_{proc.pid}_*"))  # the next run freed the dead one's block
