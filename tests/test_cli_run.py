"""``cli.py run`` as a user meets it: results on stdout, one-line errors, nothing half-written."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import pyogrio
import pytest
from click.testing import CliRunner
from scenetag.outputs_schema.schema import OutputSchema

from cli import main
from tests.cli_helpers import corrupt_copy, invoke, only_files
from tests.conftest import ROOT, real_scene


def test_run_writes_geopackage_and_reports_on_stdout(tiny_model, tmp_path):
    scene = real_scene("landsat7_rgb_byte.tif")
    out = tmp_path / "l7.gpkg"
    res = invoke("run", scene, "-o", out, "--model", tiny_model, "--no-progress")
    assert res.exit_code == 0, res.output
    chips = pyogrio.read_dataframe(out, layer="chips")
    assert f"{len(chips)} chips classified" in res.stdout
    assert str(out) in res.stdout
    assert len(chips) > 50


def test_existing_output_needs_overwrite(tiny_model, tmp_path):
    scene = real_scene("landsat7_rgb_byte.tif")
    out = tmp_path / "o.gpkg"
    out.write_bytes(b"precious")
    res = invoke("run", scene, "-o", out, "--model", tiny_model)
    assert res.exit_code == 1
    assert "exists: pass --overwrite" in res.output
    assert out.read_bytes() == b"precious"
    res = invoke("run", scene, "-o", out, "--model", tiny_model, "--overwrite", "--no-progress")
    assert res.exit_code == 0, res.output
    assert len(pyogrio.read_dataframe(out, layer="chips")) > 0


@pytest.mark.parametrize("case, message", [
    ("text", "not a raster GDAL can read"),
    ("missing", "does not exist"),
    ("truncated", "truncated or corrupt|not a raster GDAL can read"),
    ("rpcs", "no geotransform"),
    ("bands_count", "model expects 3 bands"),
    ("bands_range", "band index 9 is out of range"),
    ("bands_syntax", "not a comma-separated list"),
])
def test_bad_scenes_fail_in_one_line_and_write_nothing(tiny_model, tmp_path, case, message):
    outdir = tmp_path / "out"
    outdir.mkdir()
    args = []
    if case == "text":
        scene = tmp_path / "notes.tif"
        scene.write_text("this is not a raster\n")
    elif case == "missing":
        scene = tmp_path / "nope.tif"
    elif case == "truncated":
        # A striped, uncompressed copy cut in half: the header opens, the data is gone.
        import rasterio

        full = tmp_path / "full.tif"
        with rasterio.open(real_scene("landsat7_rgb_byte.tif")) as src:
            profile = src.profile | {"tiled": False, "compress": None}
            with rasterio.open(full, "w", **profile) as dst:
                dst.write(src.read())
        scene = corrupt_copy(full, tmp_path / "cut.tif", 0.5)
    elif case == "rpcs":
        scene = real_scene("no_geotransform_rpcs.tif")
    else:
        scene = real_scene("landsat7_rgb_byte.tif")
        args = {"bands_count": ["--bands", "1,2"], "bands_range": ["--bands", "1,2,9"],
                "bands_syntax": ["--bands", "red,green"]}[case]
    res = invoke("run", scene, "-o", outdir / "o.gpkg", "--model", tiny_model, "--no-progress", *args)
    assert res.exit_code != 0
    assert "Traceback" not in res.output
    import re

    assert re.search(message, res.output), res.output
    assert len([l for l in res.output.strip().splitlines() if l.startswith("Error")]) == 1
    assert only_files(outdir) == []


def test_bad_models(tmp_path, tiny_model):
    scene = real_scene("landsat7_rgb_byte.tif")
    out = tmp_path / "o.gpkg"
    res = invoke("run", scene, "-o", out, "--model", tmp_path / "none.onnx")
    assert res.exit_code == 1 and "does not exist" in res.output
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x01garbage")
    res = invoke("run", scene, "-o", out, "--model", bad)
    # By the backend `auto` took: OpenVINO on the CPU where it is installed, else ONNX Runtime.
    assert res.exit_code == 1 and ("could not be loaded by ONNX Runtime" in res.output
                                   or "could not be read by OpenVINO (is it a valid ONNX file?): Unable to read"
                                   in res.output)
    # A real ONNX model without our metadata: say how to supply the labels.
    proto = onnx.load(str(tiny_model))
    del proto.metadata_props[:]
    plain = tmp_path / "plain.onnx"
    onnx.save(proto, str(plain))
    res = invoke("run", scene, "-o", out, "--model", plain)
    assert res.exit_code == 1 and "--spec spec.json" in res.output
    # ...and --spec supplies them.
    from tests.model_fixtures import tiny_spec

    spec_file = tmp_path / "spec.json"
    spec_file.write_text(tiny_spec().to_json())
    res = invoke("run", scene, "-o", out, "--model", plain, "--spec", spec_file, "--no-progress")
    assert res.exit_code == 0, res.output
    chips = pyogrio.read_dataframe(out, layer="chips")
    assert len(chips) > 50
    assert [c for c in chips.columns if c.startswith("p_")] == list(OutputSchema(tiny_spec().labels).prob_columns)
    assert only_files(tmp_path) == sorted(["bad.onnx", "o.gpkg", "plain.onnx", "spec.json"])


def test_unwritable_or_missing_output_folder(tiny_model, tmp_path):
    scene = real_scene("landsat7_rgb_byte.tif")
    res = invoke("run", scene, "-o", tmp_path / "no" / "such" / "o.gpkg", "--model", tiny_model)
    assert res.exit_code == 1 and "does not exist: create it first" in res.output
    if os.access("/proc/sys", os.W_OK):
        pytest.skip("no unwritable folder on this machine (root on a writable /proc/sys)")
    res = invoke("run", scene, "-o", "/proc/sys/o.gpkg", "--model", tiny_model)
    assert res.exit_code == 1 and "not writable" in res.output


def test_all_nodata_scene_gives_valid_empty_geopackage(tiny_model, tmp_path):
    out = tmp_path / "empty.gpkg"
    res = invoke("run", real_scene("all_nodata.tif"), "-o", out, "--model", tiny_model,
                 "--bands", "3,2,1", "--no-progress")
    assert res.exit_code == 0, res.output
    assert "empty" in res.stdout
    assert len(pyogrio.read_dataframe(out, layer="chips")) == 0
    runs = pyogrio.read_dataframe(out, layer="runs")
    assert runs.status[0] == "empty" and "valid pixels" in runs.reason[0]


def test_scene_smaller_than_a_chip(tmp_path):
    """266x227 px scene with 256 px chips: shifted across, padded down, both classified."""
    from tests.model_fixtures import export_tiny_model, tiny_spec

    model = export_tiny_model(tmp_path / "m256.onnx", tiny_spec(chip_size=256, resolution_m=3.0))
    out = tmp_path / "small.gpkg"
    res = invoke("run", real_scene("planetscope_3m_epsg4326.tif"), "-o", out, "--model", model,
                 "--bands", "3,2,1", "--no-progress")
    assert res.exit_code == 0, res.output
    chips = pyogrio.read_dataframe(out, layer="chips")
    assert list(zip(chips.x_off, chips.width, chips.height)) == [(0, 256, 227), (10, 256, 227)]


def test_interrupted_run_leaves_nothing(tiny_model, tmp_path, monkeypatch):
    import scenetag.outputs_schema.geopackage as writer

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(writer, "runs_frame", boom)
    res = CliRunner().invoke(main, ["run", str(real_scene("landsat7_rgb_byte.tif")), "-o",
                                    str(tmp_path / "o.gpkg"), "--model", str(tiny_model), "--no-progress"])
    assert res.exit_code == 130
    assert only_files(tmp_path) == []


def test_help_is_fast_and_explains():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "cli.py"), "run", "--help"],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 0
    for option in ("--bands", "--edge", "--min-valid", "--resample", "--overwrite", "--model", "--spec"):
        assert option in out.stdout
    heavy = [m for m in ("torch", "onnxruntime", "geopandas", "rasterio") if f"| {m}\n" in out.stderr]
    assert heavy == [], f"--help imported {heavy}"


def test_progress_goes_to_stderr_and_results_to_stdout(tiny_model, tmp_path):
    out = tmp_path / "p.gpkg"
    res = invoke("run", real_scene("landsat7_rgb_byte.tif"), "-o", out, "--model", tiny_model, "--progress")
    assert res.exit_code == 0, res.output
    assert res.stdout.strip().count("\n") == 0 and "chips classified" in res.stdout
    assert "chip/s" in res.stderr or "chips/s" in res.stderr or "s/chip" in res.stderr
    assert "/156" in res.stderr  # done/total of the 13 x 12 grid


def test_run_on_an_existing_cluster_matches_run_in_process(tiny_model, tmp_path):
    from distributed import LocalCluster

    scene = real_scene("landsat7_rgb_byte.tif")
    here, there = tmp_path / "here.gpkg", tmp_path / "there.gpkg"
    assert invoke("run", scene, "-o", here, "--model", tiny_model, "--no-progress").exit_code == 0
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        res = invoke("run", scene, "-o", there, "--model", tiny_model, "--scheduler", cluster.scheduler_address)
    assert res.exit_code == 0, res.output
    assert "Dask cluster at" in res.stderr
    a = pyogrio.read_dataframe(here, layer="chips")
    b = pyogrio.read_dataframe(there, layer="chips")
    assert list(a.columns) == list(b.columns) and len(a) == len(b) > 0
    prob = [c for c in a.columns if c.startswith("p_")]
    np.testing.assert_allclose(a[prob].to_numpy(), b[prob].to_numpy(), atol=1e-6)
    assert (a.tags == b.tags).all()


def test_raster_and_to_crs(tiny_model, tmp_path):
    import rasterio

    from tests.model_fixtures import TINY_LABELS

    out = tmp_path / "l7.gpkg"
    res = invoke("run", real_scene("landsat7_rgb_byte.tif"), "-o", out, "--model", tiny_model,
                 "--raster", "--to-crs", "EPSG:4326", "--no-progress")
    assert res.exit_code == 0, res.output
    chips = pyogrio.read_dataframe(out, layer="chips")
    assert chips.crs.to_epsg() == 4326
    tif = tmp_path / "l7_prob.tif"
    with rasterio.open(real_scene("landsat7_rgb_byte.tif")) as sc:
        scene_bounds, scene_crs = sc.bounds, sc.crs
    with rasterio.open(tif) as src:
        assert src.count == len(TINY_LABELS)
        assert src.descriptions == TINY_LABELS
        assert src.crs == scene_crs  # the raster stays in the scene's CRS
        # The 12 x 13 grid of 64-px chips over 791x718 px, drawn over the scene only: 718 and 791 share
        # no divisor, so pixels of 64 / 8 scene pixels, ending less than one short of the edges.
        assert (src.height, src.width) == (718 // 8, 791 // 8)
        assert (src.bounds.left, src.bounds.top) == (scene_bounds.left, scene_bounds.top)
        assert src.bounds.right <= scene_bounds.right and src.bounds.bottom >= scene_bounds.bottom
        probs = src.read()
    # Each chip over its cell (8 x 8 raster pixels, the last row and column's fewer), NaN where skipped.
    grid = np.full((12 + 1, 13 + 1), np.nan, np.float32)
    grid[chips.row, chips.col] = chips.p_clear
    rows = np.minimum(np.arange(718 // 8) // 8, 11)
    cols = np.minimum(np.arange(791 // 8) // 8, 12)
    np.testing.assert_allclose(probs[0], grid[rows[:, None], cols[None, :]], rtol=1e-6)
    # An existing raster is refused like an existing GeoPackage.
    out.unlink()
    res = invoke("run", real_scene("landsat7_rgb_byte.tif"), "-o", out, "--model", tiny_model, "--raster")
    assert res.exit_code == 1 and "_prob.tif' exists" in res.output and not out.exists()


def test_torch_backend_matches_onnx_end_to_end(tmp_path):
    """The same weights as a checkpoint (torch backend) and as ONNX give the same GeoPackage."""
    from scenetag.model.training.checkpoint import save_checkpoint
    from scenetag.model.training.export import export_onnx

    from tests.model_fixtures import small_model, tiny_spec

    spec = tiny_spec()
    net = small_model(spec, seed=3)
    ckpt = save_checkpoint(tmp_path / "m.pt", net, spec)
    onnx_path = tmp_path / "m.onnx"
    export_onnx(net, spec, onnx_path, n_random=1)
    scene = real_scene("drone_rgba_alpha.tif")
    outs = {}
    for name, model in (("torch", ckpt), ("onnx", onnx_path)):
        outs[name] = tmp_path / f"{name}.gpkg"
        res = invoke("run", scene, "-o", outs[name], "--model", model, "--no-progress")
        assert res.exit_code == 0, res.output
    a = pyogrio.read_dataframe(outs["torch"], layer="chips")
    b = pyogrio.read_dataframe(outs["onnx"], layer="chips")
    prob = [c for c in a.columns if c.startswith("p_")]
    assert len(a) == len(b) > 10
    np.testing.assert_allclose(a[prob].to_numpy(), b[prob].to_numpy(), atol=1e-4)
    runs = pyogrio.read_dataframe(outs["torch"], layer="runs")
    assert runs.model_sha256[0] != pyogrio.read_dataframe(outs["onnx"], layer="runs").model_sha256[0]


def test_precision_option(tiny_model, tmp_path):
    from scenetag.model.training.checkpoint import save_checkpoint

    from tests.model_fixtures import small_model, tiny_spec

    scene = real_scene("landsat7_rgb_byte.tif")
    res = invoke("run", scene, "-o", tmp_path / "a.gpkg", "--model", tiny_model, "--precision", "bf16")
    assert res.exit_code == 1 and "needs the torch backend" in res.output
    assert not (tmp_path / "a.gpkg").exists()
    ckpt = save_checkpoint(tmp_path / "m.pt", small_model(tiny_spec()), tiny_spec())
    chips = {}
    for precision in ("bf16", "fp32"):
        out = tmp_path / f"{precision}.gpkg"
        res = invoke("run", scene, "-o", out, "--model", ckpt, "--precision", precision, "--no-progress")
        assert res.exit_code == 0, res.output
        chips[precision] = pyogrio.read_dataframe(out, layer="chips")
    assert len(chips["bf16"]) == len(chips["fp32"]) > 50
    prob = [c for c in chips["fp32"].columns if c.startswith("p_")]
    diff = np.abs(chips["bf16"][prob].to_numpy() - chips["fp32"][prob].to_numpy()).max()
    assert 0 < diff < 0.05, f"bf16 differs from fp32 by {diff}: the precision did not reach the model"
