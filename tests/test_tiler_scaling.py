"""The per-scene stretch (tiler.scaling): computed from valid pixels whatever the sparsity, or refused."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from scenetag.errors import SceneError
from scenetag.tiler.scaling import MIN_STRETCH_VALUES, scene_stretch
from scenetag.tiler.scene import open_scene
from tests.tiler_rasters import spec

#: The sparse scene: 3000 px square, 256-px tiles, valid only in the tile at rows/cols 1280..1536,
#: which the first spread of 8 x 8 sample tiles (tile rows and columns 0, 1, 3, 4, 6, 7, 9, 10) misses.
SIDE, TILE, PATCH = 3000, 256, (1280, 1536)


def sparse_scene(make_raster, name="sparse.tif", seed=5):
    """A large uint16 scene without overviews, nodata 0, valid in one small patch; and that patch's values."""
    rng = np.random.default_rng(seed)
    data = np.zeros((3, SIDE, SIDE), np.uint16)
    a, b = PATCH
    patch = rng.integers(1000, 5000, size=(3, b - a, b - a)).astype(np.uint16)
    patch[:, : (b - a) // 2] += 3000  # structure the model can see: a bright top half
    data[:, a:b, a:b] = patch
    path = make_raster(name, data, nodata=0, TILED="YES", BLOCKXSIZE=TILE, BLOCKYSIZE=TILE, COMPRESS="DEFLATE")
    return path, patch


def test_stretch_of_a_sparse_scene_is_taken_from_its_valid_pixels(make_raster):
    """Today's spread of sample tiles finds no valid pixel here (and fell back to 0..1)."""
    path, patch = sparse_scene(make_raster)
    with rasterio.open(path) as src:
        assert not src.overviews(1)
    stretch = scene_stretch(open_scene(path), (1, 2, 3), spec())
    assert stretch.estimated
    flat = patch.reshape(3, -1)
    np.testing.assert_allclose(stretch.low, np.percentile(flat, 2, axis=1), rtol=1e-6)
    np.testing.assert_allclose(stretch.high, np.percentile(flat, 98, axis=1), rtol=1e-6)


def test_stretch_of_a_sparse_scene_whose_overview_holds_too_few_valid_pixels(make_raster):
    """An overview holds a few hundred of the patch's pixels: the sample goes on to full-resolution blocks."""
    path, patch = sparse_scene(make_raster, "ov.tif")
    with rasterio.open(path, "r+") as dst:
        dst.build_overviews([16], rasterio.enums.Resampling.nearest)
    stretch = scene_stretch(open_scene(path), (1, 2, 3), spec())
    flat = patch.reshape(3, -1)
    np.testing.assert_allclose(stretch.low, np.percentile(flat, 2, axis=1), rtol=1e-6)
    np.testing.assert_allclose(stretch.high, np.percentile(flat, 98, axis=1), rtol=1e-6)


def test_too_few_valid_pixels_to_estimate_a_stretch_is_a_scene_error(make_raster):
    data = np.zeros((3, 1500, 1500), np.uint16)
    data[:, 700:705, 700:705] = 1234  # 25 valid pixels
    path = make_raster("few.tif", data, nodata=0, TILED="YES", BLOCKXSIZE=TILE, BLOCKYSIZE=TILE)
    with pytest.raises(SceneError, match=f"only 25 valid pixels in band 1 .*at least {MIN_STRETCH_VALUES}"
                                         ".*scaling 'fixed'"):
        scene_stretch(open_scene(path), (1, 2, 3), spec())


def test_a_scene_without_one_valid_pixel_has_no_stretch_to_apply(make_raster):
    path = make_raster("none.tif", np.zeros((3, 1500, 1500), np.uint16), nodata=0)
    stretch = scene_stretch(open_scene(path), (1, 2, 3), spec())
    assert not stretch.estimated
    with pytest.raises(SceneError, match="not estimated"):
        stretch.apply(np.ones((3, 4, 4), np.uint16))
