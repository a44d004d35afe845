"""ChipReader: one read core; a single chip is a run of one, and both give GDAL's own chips."""

from __future__ import annotations

import numpy as np
import pytest

from scenetag.tiler.feed import runs_of
from scenetag.tiler.reader import ChipReader, RunRead
from scenetag.tiler.scene import MaskMode, open_scene
from tests.conftest import real_scene
from tests.tiler_rasters import holey_scene, masked_scenes, reader_for, reference_chip, spec


def _assert_gdal_chips(reader: ChipReader, run, got: RunRead) -> None:
    """``got`` (the read of ``run``) has the valid fractions, kept cells and pixels of plain GDAL reads."""
    refs = [reference_chip(reader, cell) for cell in run]
    np.testing.assert_allclose(got.valid, [f for f, _ in refs], atol=1e-6)
    assert got.kept.tolist() == [i for i, (_, px) in enumerate(refs) if px is not None]
    assert got.pixels.shape == (len(got.kept), len(reader.bands), reader.chip_size, reader.chip_size)
    for j, k in enumerate(got.kept):
        np.testing.assert_array_equal(got.pixels[j], refs[int(k)][1])


def _assert_same_read(a: RunRead, b: RunRead, i: int) -> None:
    """Cell ``i`` of ``b`` is read as ``a`` (a run of one) reads it."""
    assert a.valid[0] == b.valid[i]
    assert (len(a.kept) == 1) is (i in b.kept.tolist())
    if len(a.kept):
        np.testing.assert_array_equal(a.pixels[0], b.pixels[b.kept.tolist().index(i)])


@pytest.mark.parametrize("kind", list(MaskMode))
def test_mask_mode_is_the_scenes_found_when_it_is_opened(make_raster, kind):
    assert open_scene(masked_scenes(make_raster)[kind.value]).mask_mode is kind


@pytest.mark.parametrize("name,kind", [("planetscope_borneo_3m_analytic.tif", MaskMode.NODATA),
                                       ("drone_rgba_alpha.tif", MaskMode.GDAL),
                                       ("landsat8_rgb16.tif", MaskMode.ALL_VALID)])
def test_mask_mode_of_real_scenes(name, kind):
    info = open_scene(real_scene(name))
    assert info.mask_mode is kind and len(info.nodatavals) == info.count


@pytest.mark.parametrize("edge,stride,min_valid,dtype", [
    ("shift", None, 0.5, "uint8"),
    ("pad", None, 0.2, "uint8"),
    ("shift", 40, 0.5, "uint16"),
    ("pad", 50, 0.0, "uint16"),
    ("skip", 64, 0.9, "uint8"),
])
def test_runs_give_gdals_chips(make_raster, edge, stride, min_valid, dtype):
    reader, grid = reader_for(holey_scene(make_raster, dtype=dtype), spec(), stride=stride, edge=edge,
                              min_valid=min_valid)
    n_kept = 0
    with reader:
        for run in runs_of(list(grid), per_run=3):
            got = reader.read_run(run)
            _assert_gdal_chips(reader, run, got)
            n_kept += len(got.kept)
    assert 0 < n_kept < len(grid)  # the scene has both kinds of chip


@pytest.mark.parametrize("kind", [m.value for m in MaskMode])
@pytest.mark.parametrize("resample", [False, True])
def test_every_mask_mode_gives_gdals_chips(make_raster, kind, resample):
    model = spec(resolution_m=20.0 if resample else 10.0)  # the scenes are 10 m
    reader, grid = reader_for(masked_scenes(make_raster)[kind], model, bands=(3, 2, 1), stride=40,
                              min_valid=0.3, resample=resample)
    assert (reader.factor != 1.0) is resample
    with reader:
        for run in runs_of(list(grid), per_run=4):
            _assert_gdal_chips(reader, run, reader.read_run(run))


REAL_CASES = {
    "nodata": ("planetscope_borneo_3m_analytic.tif", (3, 2, 1), dict(resolution_m=3.0), 48, False),
    "alpha": ("drone_rgba_alpha.tif", None, dict(resolution_m=0.35), None, False),
    "all_valid_uint16": ("landsat8_rgb16.tif", None, dict(resolution_m=60.0), 40, False),
    "nodata_resampled": ("planetscope_borneo_3m_analytic.tif", (3, 2, 1), dict(resolution_m=6.0), None, True),
    "alpha_resampled": ("drone_rgba_alpha.tif", None, dict(resolution_m=1.0), 48, True),
}


@pytest.mark.parametrize("case", sorted(REAL_CASES))
def test_read_of_a_cell_is_its_chip_in_a_run_on_real_scenes(case):
    """For every cell of a real scene, ``read(cell)`` is ``read_run([cell])`` and the cell's chip in its run."""
    name, bands, model, stride, resample = REAL_CASES[case]
    reader, grid = reader_for(real_scene(name), spec(**model), bands=bands, stride=stride, min_valid=0.3,
                              resample=resample)
    assert (reader.factor != 1.0) is resample
    kept = 0
    with reader:
        for run in runs_of(list(grid)):
            together = reader.read_run(run)
            _assert_gdal_chips(reader, run, together)
            for i, cell in enumerate(run):
                one = reader.read(cell)
                assert one.cells == (cell,)
                _assert_same_read(one, reader.read_run([cell]), 0)
                _assert_same_read(one, together, i)
            kept += len(together.kept)
    assert 0 < kept <= len(grid)


def test_read_run_writes_into_the_room_given(make_raster):
    reader, grid = reader_for(holey_scene(make_raster), spec(), min_valid=0.0)
    run = runs_of(list(grid))[0]
    out = np.full((len(run), 3, 64, 64), 7, np.uint8)
    with reader:
        got = reader.read_run(run, out=out)
    assert got.n_skipped == len(run) - len(got.kept) and len(got.kept) > 0
    assert np.shares_memory(got.pixels, out)
    np.testing.assert_array_equal(out[:len(got.kept)], got.pixels)


def test_read_run_refuses_cells_of_two_rows(make_raster):
    reader, grid = reader_for(holey_scene(make_raster), spec())
    cells = list(grid)
    two_rows = [cells[0], next(c for c in cells if c.row == 1)]
    with reader, pytest.raises(ValueError, match="one grid row"):
        reader.read_run(two_rows)


@pytest.mark.parametrize("dtype,nodata", [("float32", float("nan")), ("float32", -9999.0), ("int16", -32768.0)])
def test_nodata_values_of_every_kind_give_gdals_mask(make_raster, dtype, nodata):
    """NaN (compared with care) and ordinary values (compared in one go)."""
    rng = np.random.default_rng(5)
    data = rng.integers(1, 4000, size=(3, 150, 170)).astype(dtype)
    data[:, :, :70] = nodata
    data[1, 100:, :] = nodata  # one band only: still valid there
    path = make_raster("nd.tif", data, nodata=nodata, tiled=True)
    reader, grid = reader_for(path, spec(), stride=40, min_valid=0.2)
    assert reader.scene.mask_mode is MaskMode.NODATA
    with reader:
        for run in runs_of(list(grid), per_run=4):
            _assert_gdal_chips(reader, run, reader.read_run(run))


@pytest.mark.parametrize("mask", ["all_valid", "nodata", "alpha"])
@pytest.mark.parametrize("resample", [False, True])
def test_a_small_fully_valid_scene_is_one_chip_valid_1(make_raster, mask, resample):
    """150x150 px, 256-px chips: the valid share is of the chip's part inside the scene, not of the padding."""
    data = np.random.default_rng(4).integers(1, 255, (3, 150, 150)).astype("uint8")
    if mask == "alpha":
        data = np.concatenate([data, np.full((1, 150, 150), 255, np.uint8)])
        path = make_raster("small.tif", data, photometric="RGB", alpha="YES")
    else:
        path = make_raster("small.tif", data, nodata=0 if mask == "nodata" else None)
    assert open_scene(path).mask_mode is {"all_valid": MaskMode.ALL_VALID, "nodata": MaskMode.NODATA,
                                          "alpha": MaskMode.GDAL}[mask]
    # With --resample the model's 10 m chip is read from 150 px at 8 m: still smaller than a chip.
    reader, grid = reader_for(path, spec(chip_size=256, resolution_m=8.0 if resample else 10.0),
                              bands=(1, 2, 3), resample=resample)
    assert len(grid) == 1
    got = reader.read(next(iter(grid)))
    assert got.n_skipped == 0 and got.valid.tolist() == [1.0]
    fraction, chip = reference_chip(reader, next(iter(grid)))
    assert fraction == 1.0 and np.array_equal(got.pixels[0], chip)
    # Half the scene nodata: half valid, counted over the 150 x 150 pixels that are there.
    if mask == "nodata":
        data[:, :, :75] = 0
        reader, grid = reader_for(make_raster("half.tif", data, nodata=0), spec(chip_size=256), bands=(1, 2, 3))
        assert reader.read(next(iter(grid))).valid.tolist() == [0.5]


@pytest.mark.parametrize("origin, size, message", [
    ((-10.0, 95.0), 0.1, "latitude 75..95 reaches past ±90°"),
    ((-10.0, -70.0), 0.1, ""),  # -70 - 200 x 0.1 = -90: on the pole, not past it
    ((350.0, 10.0), 0.1, "longitude 350..370 reaches past"),
    ((-185.0, 10.0), 0.1, "longitude -185..-165 reaches past"),
    ((500000.0, 4000000.0), 10.0, "latitude"),  # UTM coordinates labelled EPSG:4326
])
def test_geographic_scene_whose_bounds_leave_the_globe_is_refused(make_raster, origin, size, message):
    from affine import Affine

    from scenetag.errors import GeoreferenceError

    transform = Affine(size, 0, origin[0], 0, -size, origin[1])
    path = make_raster("g.tif", width=200, height=200, crs="EPSG:4326", transform=transform)
    if origin == (-10.0, -70.0):  # -70 - 20 = -90: on the pole, not past it
        assert open_scene(path).crs.is_geographic
        return
    with pytest.raises(GeoreferenceError, match="leave the globe") as err:
        open_scene(path)
    assert message in str(err.value) and "left" in str(err.value) and "gdal_edit" in str(err.value)


def test_geographic_scene_on_a_0_360_grid_is_accepted(make_raster):
    from affine import Affine

    path = make_raster("g.tif", width=200, height=200, crs="EPSG:4326", transform=Affine(0.1, 0, 340.0, 0, -0.1, 10))
    assert open_scene(path).width == 200
