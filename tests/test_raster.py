"""The probability COG: one band per label, one pixel per chip grid position."""

from __future__ import annotations

import math

import numpy as np
import pytest
import rasterio
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st

from scenetag.outputs_schema.raster import NODATA, grid_transform, probability_grid, write_probability_raster
from scenetag.outputs_schema.records import ChipTable
from scenetag.outputs_schema.schema import SCHEMA_VERSION
from scenetag.errors import OutputError, OutputExistsError
from tests.conftest import real_scene
from tests.qgis_fixtures import synthetic_table

LABELS = ("clear", "water", "it's; DROP TABLE chips--")
SCENE_TRANSFORM = Affine(10.0, 0, 500000.0, 0, -10.0, 4000000.0)


def assert_matches_table(path, table: ChipTable, labels, n_rows, n_cols):
    with rasterio.open(path) as src:
        data = src.read()
        assert src.count == len(labels)
        assert src.descriptions == tuple(labels)
        assert (src.height, src.width) == (n_rows, n_cols)
        assert all(d == "float32" for d in src.dtypes)
        assert math.isnan(src.nodata)
    expected = np.full((len(labels), n_rows, n_cols), np.nan, np.float32)
    for i in range(len(table)):
        expected[:, table.row[i], table.col[i]] = table.probs[i]
    np.testing.assert_array_equal(data, expected)  # NaN where skipped, exact values elsewhere
    assert np.isfinite(data[0]).sum() == len(table)


@pytest.mark.parametrize("crs", ["EPSG:32633", "EPSG:4326"])
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (40, 7)])
def test_round_trip_is_a_cog_with_label_bands(tmp_path, crs, shape):
    n_rows, n_cols = shape
    table = synthetic_table(n_rows, n_cols, len(LABELS), seed=n_rows)
    base = Affine(0.0001, 0, 110.0, 0, -0.0001, 1.0) if crs == "EPSG:4326" else SCENE_TRANSFORM
    transform = base @ Affine.scale(64)
    out = write_probability_raster(tmp_path / "p.tif", table, LABELS, n_rows, n_cols, transform, crs)
    assert out == tmp_path / "p.tif"
    assert_matches_table(out, table, LABELS, n_rows, n_cols)
    with rasterio.open(out) as src:
        assert src.crs == rasterio.crs.CRS.from_user_input(crs)
        assert src.transform.almost_equals(transform)
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert src.compression.value == "DEFLATE"
        assert src.tags(3)["label"] == LABELS[2]
        assert src.tags()["scenetag_schema_version"] == str(SCHEMA_VERSION)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.qml", "p.tif"]  # no temporary left


def test_heat_map_style_goes_beside_the_raster(tmp_path):
    import xml.etree.ElementTree as ET

    table = synthetic_table(2, 2, 2)
    write_probability_raster(tmp_path / "p.tif", table, ("water", "clear"), 2, 2, SCENE_TRANSFORM,
                             "EPSG:32633")
    root = ET.fromstring((tmp_path / "p.qml").read_text().split("\n", 1)[1])
    r = root.find("pipe/rasterrenderer")
    assert r.get("type") == "singlebandpseudocolor" and r.get("band") == "1"
    items = r.findall("rastershader/colorrampshader/item")
    values = [float(i.get("value")) for i in items]
    assert values[0] == 0.0 and values[-1] == 1.0 and values == sorted(values)
    alphas = [int(i.get("alpha")) for i in items]
    assert alphas[0] == 0 and alphas == sorted(alphas)  # unlikely areas let the scene show
    assert "p(water)" in r.find("rastershader/colorrampshader/item").get("label")
    # style=False writes none (SceneOutputs keeps a style of the user's own that way).
    write_probability_raster(tmp_path / "q.tif", table, ("water", "clear"), 2, 2, SCENE_TRANSFORM,
                             "EPSG:32633", style=False)
    assert not (tmp_path / "q.qml").exists()


@given(st.integers(1, 64), st.integers(0, 4), st.integers(0, 50), st.integers(0, 50))
@settings(max_examples=40, deadline=None)
def test_grid_transform_centres_each_pixel_on_its_chip(stride, extra, r, c):
    chip = stride * (1 + extra)
    t = grid_transform(SCENE_TRANSFORM, stride, chip)
    x, y = t @ (c + 0.5, r + 0.5)
    cx, cy = SCENE_TRANSFORM @ (c * stride + chip / 2, r * stride + chip / 2)
    assert (x, y) == pytest.approx((cx, cy))
    assert t.a == SCENE_TRANSFORM.a * stride  # one stride per pixel
    # Without overlap, or without the chip, a pixel starts where its chip starts.
    start = SCENE_TRANSFORM @ (c * stride, r * stride)
    assert grid_transform(SCENE_TRANSFORM, stride) @ (c, r) == pytest.approx(start)


def test_grid_transform_refuses_bad_sizes():
    with pytest.raises(ValueError, match="stride"):
        grid_transform(SCENE_TRANSFORM, 0)
    with pytest.raises(ValueError, match="smaller than the stride"):
        grid_transform(SCENE_TRANSFORM, 64, 32)


@given(st.integers(1, 9), st.integers(1, 9), st.floats(0, 1), st.integers(0, 2**16))
@settings(max_examples=25, deadline=None)
def test_probability_grid_places_each_chip_at_its_row_and_col(n_rows, n_cols, keep, seed):
    table = synthetic_table(n_rows, n_cols, 2, keep=keep, seed=seed)
    grid = probability_grid(table, 2, n_rows, n_cols)
    assert grid.shape == (2, n_rows, n_cols) and grid.dtype == np.float32
    for i in range(len(table)):
        np.testing.assert_array_equal(grid[:, table.row[i], table.col[i]], table.probs[i])
    assert np.isnan(grid).sum() == 2 * (n_rows * n_cols - len(table))


def test_empty_table_gives_all_nodata(tmp_path):
    out = write_probability_raster(tmp_path / "e.tif", ChipTable.empty(2), ("a", "b"), 2, 3,
                                   SCENE_TRANSFORM, "EPSG:32633")
    with rasterio.open(out) as src:
        assert np.isnan(src.read()).all()
    assert math.isnan(NODATA)


def test_bad_tables_are_refused():
    dup = ChipTable.from_rows([(0, 0, 0, 0, 8, 8, 1.0), (0, 0, 0, 0, 8, 8, 1.0)], np.zeros((2, 1), np.float32))
    with pytest.raises(ValueError, match="row 0, col 0 has 2 chips"):
        probability_grid(dup, 1, 2, 2)
    far = ChipTable.from_rows([(5, 0, 0, 0, 8, 8, 1.0)], np.zeros((1, 1), np.float32))
    with pytest.raises(ValueError, match="outside the 2x2 grid"):
        probability_grid(far, 1, 2, 2)
    with pytest.raises(ValueError, match="expected 3"):
        probability_grid(far, 3, 9, 9)


def test_an_existing_raster_is_replaced_only_when_asked(tmp_path):
    out = tmp_path / "p.tif"
    out.write_bytes(b"old")
    table = synthetic_table(2, 2, 1)
    with pytest.raises(OutputExistsError, match="p.tif.*--overwrite"):
        write_probability_raster(out, table, ("a",), 2, 2, SCENE_TRANSFORM, "EPSG:32633")
    assert out.read_bytes() == b"old"
    write_probability_raster(out, table, ("a",), 2, 2, SCENE_TRANSFORM, "EPSG:32633", replace=True)
    assert_matches_table(out, table, ("a",), 2, 2)


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    out = tmp_path / "p.tif"
    out.write_bytes(b"old")

    def broken_set_band_description(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(rasterio.io.BufferedDatasetWriter, "set_band_description", broken_set_band_description)
    with pytest.raises(OutputError, match="disk full"):
        write_probability_raster(out, synthetic_table(2, 2, 1), ("a",), 2, 2, SCENE_TRANSFORM,
                                 "EPSG:32633")
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.tif"]


def test_real_scene_grid_raster_covers_the_scene(tmp_path, tiny_model):
    """Borneo through the scene job: one pixel per grid position, NaN where chips were skipped."""
    from scenetag.jobs.options import RunOptions
    from scenetag.jobs.classify import classify_cells
    from scenetag.jobs.scene_job import plan_scene
    from scenetag.model.backends import create_predictor

    scene = real_scene("planetscope_borneo_3m_analytic.tif")
    predictor = create_predictor(tiny_model)
    plan = plan_scene(scene, predictor.spec, RunOptions(bands=(3, 2, 1)))
    table = classify_cells(plan, predictor)
    n_rows, n_cols = plan.grid.shape
    stride = plan.grid.stride
    out = write_probability_raster(tmp_path / "borneo_prob.tif", table, predictor.spec.labels, n_rows, n_cols,
                                   grid_transform(plan.info.transform, stride, plan.grid.chip), plan.info.crs)
    assert_matches_table(out, table, predictor.spec.labels, n_rows, n_cols)
    with rasterio.open(out) as src, rasterio.open(scene) as sc:
        assert src.crs == sc.crs
        assert src.bounds.left == sc.bounds.left and src.bounds.top == sc.bounds.top
        # The grid covers the scene (512 px, 64 px chips: exactly 8 x 8).
        assert (src.width * stride, src.height * stride) == (sc.width, sc.height)
        valid = np.isfinite(src.read(1))
    assert 0 < valid.sum() == len(table) < n_rows * n_cols  # Borneo is 27 % valid: skipped chips are NaN
