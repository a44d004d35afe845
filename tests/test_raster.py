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
    from scenetag.jobs.planning import plan_scene
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


# -- the raster over the scene (what the job writes) ----------------------------------
@pytest.mark.parametrize("length, n, stride, chip, want", [
    (512, 8, 64, 64, [0, 64, 128, 192, 256, 320, 384, 448, 512]),  # the grid fits: cells are chips
    (266, 5, 64, 64, [0, 64, 128, 192, 256, 266]),  # shift/pad: the last chip owns the strip past 256
    (266, 4, 64, 64, [0, 64, 128, 192, 256]),  # skip: nothing past the last chip read
    (1000, 7, 128, 256, [0, 192, 320, 448, 576, 704, 832, 1000]),  # overlap: middle strides
])
def test_cell_edges(length, n, stride, chip, want):
    from scenetag.outputs_schema.raster import cell_edges

    assert cell_edges(length, n, stride, chip).tolist() == want


def job_raster(tmp_path, scene, model, **options):
    """``scene`` through the scene job with ``--raster``: (plan, table, raster path)."""
    from scenetag.jobs.classify import classify_cells
    from scenetag.jobs.options import RunOptions
    from scenetag.jobs.planning import plan_scene
    from scenetag.model.backends import create_predictor
    from scenetag.outputs_schema.outputs import SceneFrame, SceneOutputs
    from tests.qgis_fixtures import fake_run

    predictor = create_predictor(model)
    plan = plan_scene(scene, predictor.spec, RunOptions(bands=(3, 2, 1), **options))
    table = classify_cells(plan, predictor)
    info = plan.info
    frame = SceneFrame(info.scene_id, info.transform, info.crs, plan.grid.shape, plan.grid.stride,
                       plan.grid.chip, (info.height, info.width))
    outputs = SceneOutputs(tmp_path / "out.gpkg", raster=True)
    outputs.write(table, predictor.spec, frame, fake_run())
    return plan, table, outputs.raster_path


@pytest.mark.parametrize("edge", ["shift", "pad", "skip"])
def test_raster_of_a_scene_not_a_multiple_of_the_chip_ends_on_its_edge(tmp_path, tiny_model, edge):
    """The real 266 x 227 px PlanetScope scene in 64 px chips: the raster is the scene's extent, and
    every pixel shows the chip whose cell it lies in (a shifted chip only past its neighbour)."""
    scene = real_scene("planetscope_3m_epsg4326.tif")
    plan, table, raster = job_raster(tmp_path, scene, tiny_model, edge=edge)
    with rasterio.open(raster) as src, rasterio.open(scene) as sc:
        data = src.read()
        assert src.crs == sc.crs
        # 266 = 2 x 133 and 227 is prime: no common divisor, so pixels of ceil(64 / 8) = 8 scene pixels.
        assert src.res == pytest.approx((sc.res[0] * 8, sc.res[1] * 8))
        assert (src.bounds.left, src.bounds.top) == (sc.bounds.left, sc.bounds.top)
        assert sc.bounds.left < src.bounds.right <= sc.bounds.right
        assert sc.bounds.bottom <= src.bounds.bottom < sc.bounds.top
        assert (src.width, src.height) == (266 // 8, 227 // 8)
        transform = src.transform
    probs = {(int(r), int(c)): table.probs[i] for i, (r, c) in enumerate(zip(table.row, table.col))}
    # Each pixel's centre in scene pixels, and the chip that owns it: its window holds the centre,
    # and no chip of a later grid position whose window also holds it is unshifted (cells are ordered).
    n_rows, n_cols = plan.grid.shape
    for i in range(src.height):
        for j in range(src.width):
            x, y = ~plan.info.transform @ (transform @ (j + 0.5, i + 0.5))
            col = min(int(x // 64), n_cols - 1)
            row = min(int(y // 64), n_rows - 1)
            if edge == "skip" and (x >= n_cols * 64 or y >= n_rows * 64):
                row = col = None
            want = probs.get((row, col))
            got = data[:, i, j]
            if want is None:
                assert np.isnan(got).all(), (i, j)
            else:
                np.testing.assert_array_equal(got, want)
    if edge != "skip":  # the edge chips show: their strip is not NaN where they were classified
        last = [(r, c) for (r, c) in probs if c == n_cols - 1]
        assert last and any(np.isfinite(data[0, :, -1]))


def test_a_grid_that_fits_gives_one_pixel_per_chip():
    from scenetag.outputs_schema.raster import scene_layout

    layout = scene_layout(SCENE_TRANSFORM, (512, 512), (8, 8), 64, 64)
    assert layout.shape == (8, 8) and layout.transform == SCENE_TRANSFORM @ Affine.scale(64)
    assert layout.row_of.tolist() == list(range(8)) == layout.col_of.tolist()
    # 992 x 736 in 256 px chips: edges at 256, 512, 768 and 992, 736: pixels of 32, the scene's extent.
    wide = scene_layout(SCENE_TRANSFORM, (736, 992), (3, 4), 256, 256)
    assert wide.shape == (23, 31) and wide.transform.a == 10.0 * 32
    assert wide.col_of[-7:].tolist() == [3] * 7 and wide.col_of[-8] == 2  # 224 px past 768: 7 pixels
    # 1000 x 744: a common divisor of 8 only, finer than 256 / 8: pixels of 32, ending inside the scene.
    fine = scene_layout(SCENE_TRANSFORM, (744, 1000), (3, 4), 256, 256)
    assert fine.shape == (744 // 32, 1000 // 32) and fine.transform.a == 10.0 * 32
