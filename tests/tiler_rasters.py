"""Scenes and readers for the tiler's tests, built without a model or a job.

``reference_chip`` is an independent oracle: one cell read straight through
rasterio (GDAL's dataset mask, then the bands), stretched, zeroed where
invalid and padded, with none of :class:`ChipReader`'s run logic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import rasterio
from rasterio.enums import Resampling

from scenetag.model.spec import ModelSpec
from scenetag.tiler.grid import EdgePolicy, Grid, GridCell, chip_grid
from scenetag.tiler.reader import ChipReader
from scenetag.tiler.scaling import scene_stretch
from scenetag.tiler.scene import open_scene, resolution_factor, select_bands


def spec(chip_size: int = 64, resolution_m: float = 10.0) -> ModelSpec:
    """A 3-band RGB spec, built directly (no network needed to read chips)."""
    return ModelSpec.create("test", "resnet18", ["a", "b"], chip_size=chip_size, resolution_m=resolution_m)


def reader_for(path: str | Path, model: ModelSpec, bands: Sequence[int] | None = None, stride: int | None = None,
               edge: EdgePolicy | str = EdgePolicy.SHIFT, min_valid: float = 0.5,
               resample: bool = False) -> tuple[ChipReader, Grid]:
    """A reader for ``path`` and its grid, as a job plans them (stride in model pixels)."""
    info = open_scene(path)
    chosen = select_bands(info, model, bands)
    factor = resolution_factor(info, model, resample)
    chip = max(1, round(model.chip_size * factor))
    step = max(1, round((stride or model.chip_size) * factor))
    grid = chip_grid(info.width, info.height, chip, step, edge)
    reader = ChipReader(info, chosen, model.chip_size, factor, scene_stretch(info, chosen, model), min_valid)
    return reader, grid


def reference_chip(reader: ChipReader, cell: GridCell) -> tuple[float, np.ndarray | None]:
    """``(valid fraction, pixels or None when skipped)`` of ``cell``, read plainly through rasterio."""
    size, nb = reader.chip_size, len(reader.bands)
    oh, ow = reader.out_shape(cell)
    with rasterio.open(reader.scene.path) as ds:
        valid = ds.dataset_mask(window=cell.window, out_shape=(oh, ow), resampling=Resampling.nearest) > 0
        fraction = min(1.0, np.count_nonzero(valid) / float(oh * ow))  # of the chip's part inside the scene
        if fraction < reader.min_valid or fraction == 0.0:
            return fraction, None
        data = ds.read(reader.bands, window=cell.window, out_shape=(nb, oh, ow), resampling=reader.resampling)
    pixels = reader.stretch.apply(data) if reader.stretch is not None else data.astype(np.uint8)
    pixels = np.where(valid[None], pixels, 0).astype(np.uint8)
    chip = np.zeros((nb, size, size), np.uint8)
    chip[:, :oh, :ow] = pixels
    return fraction, chip


def holey_scene(make_raster, dtype: str = "uint8", nodata: float | None = 0, seed: int = 3, width: int = 333,
                height: int = 270, transform=None) -> Path:
    """A scene with a ragged nodata region, so that some chips are partly or wholly invalid."""
    rng = np.random.default_rng(seed)
    hi = 255 if dtype == "uint8" else 4000
    data = rng.integers(1, hi, size=(3, height, width)).astype(dtype)
    yy, xx = np.mgrid[:height, :width]
    data[:, (xx + 0.7 * yy) > 300] = 0
    data[:, :40, :50] = 0
    return make_raster("s.tif", data, nodata=nodata, tiled=True, transform=transform)


def masked_scenes(make_raster) -> dict[str, Path]:
    """A scene for each mask mode: none, per-band nodata (in some bands only), alpha."""
    rng = np.random.default_rng(7)
    h, w = 200, 300
    four = rng.integers(1, 255, size=(4, h, w)).astype("uint8")
    four[:3, :, :120] = 0  # bands 1-3 nodata on the left; band 4 still valid there
    four[:, 150:, 200:] = 0  # every band nodata bottom right
    alpha = rng.integers(1, 255, size=(4, h, w)).astype("uint8")
    alpha[3] = 255
    alpha[3, :90, :] = 0
    return {
        "all_valid": make_raster("plain.tif", rng.integers(0, 255, size=(3, h, w)).astype("uint8")),
        "nodata": make_raster("four.tif", four, nodata=0, tiled=True),
        "gdal": make_raster("alpha.tif", alpha, photometric="RGB", alpha="YES"),
    }
