"""Know the work before doing it: ``run``/``batch --dry-run``, the resample cost, a scene smaller than a chip.

Every number a dry run prints is checked against what the real run then
records in its ``runs`` table, so the plan cannot drift from the work.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pyogrio
import pytest
from affine import Affine

from tests.cli_helpers import invoke, only_files
from tests.conftest import real_scene


def runs_row(gpkg):
    return pyogrio.read_dataframe(gpkg, layer="runs").iloc[-1]


def plan_json(*args):
    res = invoke(*args, "--dry-run", "--format", "json")
    return res, (json.loads(res.stdout) if res.stdout.strip().startswith(("{", "[")) else None)


@pytest.mark.parametrize("extra", [(), ("--edge", "skip", "--stride", "48")])
def test_run_dry_run_plans_what_the_run_then_does_and_writes_nothing(tiny_model, tmp_path, extra):
    scene = real_scene("landsat8_rgb16.tif")
    out = tmp_path / "l8.gpkg"
    res = invoke("run", scene, "-o", out, "--model", tiny_model, "--dry-run", *extra)
    assert res.exit_code == 0, res.output
    assert only_files(tmp_path) == []  # nothing written, not even a temporary
    table = dict(re.match(r"(\w+)\s+(.*)", line).groups() for line in res.stdout.splitlines())
    assert table["action"] == "classify" and "(new)" in table["outputs"] and str(out) in table["outputs"]
    assert "from the scene's colour tags" in table["bands"]
    assert table["stretch"].startswith("p2..p98")  # a uint16 scene is stretched

    res, plan = plan_json("run", scene, "-o", out, "--model", tiny_model, *extra)
    assert res.exit_code == 0, res.output
    real = invoke("run", scene, "-o", out, "--model", tiny_model, "--no-progress", *extra)
    assert real.exit_code == 0, real.output
    row = runs_row(out)
    p = plan["plan"]
    assert p["chips"] + p["chips_skipped_edge"] == row.n_chips_total
    assert p["chips"] == row.n_chips_classified + row.n_chips_skipped_nodata
    assert p["bands_used"] == row.bands_used
    options = json.loads(row.options)
    assert p["bands"] == options["bands_used"] and p["resolution_factor"] == options["resolution_factor"]
    assert [p["stretch"]["low"], p["stretch"]["high"]] == [options["stretch"]["low"], options["stretch"]["high"]]
    assert f"{p['chips']:,} to classify, {p['chips_skipped_edge']:,} skipped at the edge" in table["chips"]
    assert (p["chips_skipped_edge"] > 0) is bool(extra)


def test_dry_run_says_whether_each_output_is_up_to_date(tiny_model, tmp_path):
    scene = real_scene("landsat7_rgb_byte.tif")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "landsat7_rgb_byte.gpkg"
    assert invoke("run", scene, "-o", out, "--model", tiny_model, "--no-progress").exit_code == 0
    before = out.stat().st_mtime_ns

    # batch would skip it: same scene, model and options.
    res, [p] = plan_json("batch", scene, "-d", out_dir, "--model", tiny_model)
    assert res.exit_code == 0, res.output
    assert (p["output_state"], p["action"]) == ("up to date", "skip")
    # Other options: out of date, and batch would classify (and replace) it.
    res, [p] = plan_json("batch", scene, "-d", out_dir, "--model", tiny_model, "--min-valid", "0.3")
    assert (p["output_state"], p["action"]) == ("out of date", "classify")
    # run would refuse it without --overwrite: the plan says so, and the exit code is 1.
    res = invoke("run", scene, "-o", out, "--model", tiny_model, "--dry-run")
    assert res.exit_code == 1
    assert re.search(r"^action\s+refuse: .*exists: pass --overwrite", res.stdout, re.M), res.stdout
    assert res.stderr.strip().splitlines()[-1].startswith("Error: the run would refuse")
    res = invoke("run", scene, "-o", out, "--model", tiny_model, "--dry-run", "--overwrite")
    assert res.exit_code == 0 and re.search(r"^outputs\s+.*\(up to date\)", res.stdout, re.M), res.stdout
    assert out.stat().st_mtime_ns == before and only_files(out_dir) == ["landsat7_rgb_byte.gpkg"]


def test_batch_dry_run_lists_every_scene_without_cluster_lock_or_folder(tiny_model, tmp_path):
    good, bad = real_scene("landsat7_rgb_byte.tif"), real_scene("no_geotransform_rpcs.tif")
    out_dir = tmp_path / "not-yet"
    res = invoke("batch", good, bad, "-d", out_dir, "--model", tiny_model, "--dry-run")
    assert not out_dir.exists()  # no folder, lock or report
    assert "Dask" not in res.stderr  # no cluster
    assert res.exit_code == 1 and "1 of 2 scenes would be refused or fail" in res.stderr
    rows = {line.split()[0]: line.split() for line in res.stdout.splitlines() if line.endswith(("classify", "fail"))}
    assert rows["landsat7_rgb_byte.tif"][-2:] == ["new", "classify"]
    assert rows["no_geotransform_rpcs.tif"][-1] == "fail"
    assert "no_geotransform_rpcs.tif: fail: scene" in res.stdout and "no geotransform" in res.stdout
    assert f"landsat7_rgb_byte.tif: output {out_dir / 'landsat7_rgb_byte.gpkg'} (new)" in res.stdout
    assert re.search(r"2 scenes: 1 to classify \([\d,]+ chips\), 0 up to date, 0 refused, 1 would fail", res.stdout)


def coarse_scene(make_raster, metres: float, name="coarse.tif", **kw):
    """A 300x200 px RGB scene of ``metres`` per pixel (the tiny model expects 10 m)."""
    return make_raster(name, transform=Affine(metres, 0, 500000.0, 0, -metres, 4000000.0), **kw)


def test_resolution_warning_says_what_resample_would_cost(tiny_model, make_raster, tmp_path):
    scene = coarse_scene(make_raster, 60.0)  # 6x coarser: warned, and --resample allowed
    plain = invoke("run", scene, "-o", tmp_path / "plain.gpkg", "--model", tiny_model, "--no-progress")
    assert plain.exit_code == 0, plain.output
    resampled = invoke("run", scene, "-o", tmp_path / "re.gpkg", "--model", tiny_model, "--resample",
                       "--no-progress")
    assert resampled.exit_code == 0, resampled.output
    n_plain, n_re = runs_row(tmp_path / "plain.gpkg").n_chips_total, runs_row(tmp_path / "re.gpkg").n_chips_total
    assert n_re > 20 * n_plain
    assert (f"60 m scene for a 10 m model (6x coarser): tags may be unreliable; --resample would classify "
            f"{n_re:,} chips instead of {n_plain:,}") in plain.stderr
    assert "--resample-max-factor" not in plain.stderr  # within the default 8x


def test_resample_past_the_max_factor_asks_for_it(tiny_model, make_raster, tmp_path):
    scene = coarse_scene(make_raster, 100.0)  # 10x coarser: 100x the chips
    out = tmp_path / "o.gpkg"
    warned = invoke("run", scene, "-o", tmp_path / "plain.gpkg", "--model", tiny_model, "--no-progress")
    assert "(and needs --resample-max-factor 10 to confirm)" in warned.stderr
    res = invoke("run", scene, "-o", out, "--model", tiny_model, "--resample", "--no-progress")
    assert res.exit_code == 1
    m = re.search(r"--resample would classify ([\d,]+) chips instead of ([\d,]+), and past 8x that is asked for: "
                  r"pass --resample-max-factor 10 to confirm, or leave out --resample", res.stderr)
    assert m, res.stderr
    assert only_files(tmp_path) == ["coarse.tif", "plain.gpkg"]
    # The dry run says the same, without the work.
    res, plan = plan_json("run", scene, "-o", out, "--model", tiny_model, "--resample")
    assert res.exit_code == 1 and plan["action"] == "fail" and "--resample-max-factor 10" in plan["reason"]
    # Too small a confirmation is still refused; the factor named is enough.
    assert invoke("run", scene, "-o", out, "--model", tiny_model, "--resample", "--resample-max-factor", "9.9",
                  "--no-progress").exit_code == 1
    res = invoke("run", scene, "-o", out, "--model", tiny_model, "--resample", "--resample-max-factor", "10",
                 "--no-progress")
    assert res.exit_code == 0, res.output
    assert f"{runs_row(out).n_chips_total:,}" == m.group(1)
    assert f"{runs_row(tmp_path / 'plain.gpkg').n_chips_total:,}" == m.group(2)


def test_scene_smaller_than_one_chip_after_resampling_says_so(tiny_model, make_raster, tmp_path):
    # 1 m pixels for a 10 m model: one 64 px chip is 640 scene pixels, more than the 300x200 scene.
    data = np.random.default_rng(1).integers(1, 255, (3, 200, 300)).astype("uint8")
    data[:, :, 60:] = 0  # 80% nodata
    scene = coarse_scene(make_raster, 1.0, name="fine.tif", data=data, nodata=0)
    out = tmp_path / "fine.gpkg"
    res = invoke("run", scene, "-o", out, "--model", tiny_model, "--resample", "--no-progress")
    assert res.exit_code == 0, res.output
    reason = runs_row(out).reason
    assert reason.startswith("the scene is 300x200 pixels, smaller than one 640-pixel chip (64 model pixels at "
                             "10 m/pixel, as --resample reads it)"), reason
    assert "no chip had" not in reason and reason in res.stdout
    res = invoke("run", scene, "-o", tmp_path / "p.gpkg", "--model", tiny_model, "--resample", "--dry-run")
    assert re.search(r"^note\s+the scene is 300x200 pixels, smaller than one 640-pixel chip .*: it is read as one "
                     r"chip padded with invalid pixels$", res.stdout, re.M), res.stdout
    res = invoke("run", scene, "-o", tmp_path / "s.gpkg", "--model", tiny_model, "--resample", "--edge", "skip",
                 "--no-progress")
    assert "no chip fits: the scene is 300x200 pixels, smaller than one 640-pixel chip" in res.stdout


def test_format_json_without_dry_run_is_a_usage_error(tiny_model, tmp_path):
    res = invoke("run", real_scene("landsat7_rgb_byte.tif"), "-o", tmp_path / "o.gpkg", "--model", tiny_model,
                 "--format", "json")
    assert res.exit_code == 2 and "--format json is how --dry-run prints its plan: add --dry-run" in res.output
    assert only_files(tmp_path) == []
