"""The probability raster (``--raster``): a Cloud Optimized GeoTIFF heat map.

One float32 band per label, band description = the label name; one pixel per
position of the chip grid: pixel ``(r, c)`` holds the probabilities of the chip
at grid row ``r``, column ``c`` (``ChipTable.row`` / ``.col``).  Grid positions
without a classified chip (skipped for too little valid area) are
:data:`NODATA`, which is NaN and declared as the nodata value.

Georeferencing is the caller's ``transform`` of the grid; use
:func:`grid_transform`: ``scene_transform @ Affine.translation(o, o) @
Affine.scale(stride)`` with the stride in scene pixels and ``o = (chip -
stride) / 2``, so that each pixel is one stride wide and centred on its chip
(with no overlap, ``o = 0`` and a pixel is its chip).  Under the ``shift``
edge policy the last row and column of chips were moved back to end on the
scene's edge, so their pixels lie up to one stride further right or down than
the chips that were read (``pad`` and ``skip`` keep every chip on the grid).

The raster stays in the scene's CRS even when the vectors are reprojected
(``--to-crs``): resampling probabilities would invent values.

Beside it goes ``<name>.qml``, the style QGIS loads with the raster by
default: the first label's band as a 0..1 heat map (magma), NaN transparent;
another band is one click away in Layer Properties > Symbology.

Both files are written under temporary names beside ``out`` and renamed when
complete, so a killed job leaves no half-written raster.  Whether they may be
written is decided before any work by
:class:`~scenetag.outputs_schema.outputs.SceneOutputs`, which calls this module.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS

from scenetag.outputs_schema.records import ChipTable
from scenetag.outputs_schema.schema import SCHEMA_VERSION
from scenetag.outputs_schema.styles import probability_raster_qml
from scenetag.atomic import atomic_path
from scenetag.errors import OutputError, OutputExistsError
from scenetag.outputs_schema.write_errors import write_error

log = logging.getLogger(__name__)

#: Value of grid positions without a classified chip.
NODATA = float("nan")

#: GDAL COG creation options: lossless, float predictor, overviews when large enough.
COG_OPTIONS = {"COMPRESS": "DEFLATE", "PREDICTOR": "YES", "BLOCKSIZE": "256", "OVERVIEWS": "AUTO",
               "RESAMPLING": "AVERAGE"}


def style_path(out: str | Path) -> Path:
    """Where the QGIS style of the raster ``out`` goes: beside it, as ``<name>.qml``."""
    return Path(out).with_suffix(".qml")


def grid_transform(scene_transform: Affine, stride: int, chip: int | None = None) -> Affine:
    """Transform of the probability raster: one pixel of ``stride`` scene pixels per grid position.

    ``stride`` and ``chip`` are the grid's, in scene pixels (``ScenePlan.grid.stride``
    and ``.chip``).  Without ``chip``, pixel (r, c) starts where chip (r, c) starts;
    with it, the pixel is centred on the chip, which differs only where chips
    overlap (stride < chip) and keeps the heat map over what each chip saw.
    """
    if stride < 1:
        raise ValueError(f"stride must be >= 1 scene pixel, got {stride}")
    if chip is not None and chip < stride:
        raise ValueError(f"chip {chip} is smaller than the stride {stride}")
    offset = 0.0 if chip is None else (chip - stride) / 2
    return scene_transform @ Affine.translation(offset, offset) @ Affine.scale(stride)


def probability_grid(table: ChipTable, n_labels: int, n_rows: int, n_cols: int) -> np.ndarray:
    """``(n_labels, n_rows, n_cols)`` float32 array of probabilities, NaN where no chip was classified."""
    if table.probs.shape[1:] != (n_labels,) and len(table):
        raise ValueError(f"table has {table.probs.shape[1]} probabilities per chip, expected {n_labels}")
    if n_rows < 1 or n_cols < 1:
        raise ValueError(f"grid must be at least 1x1, got {n_rows}x{n_cols}")
    grid = np.full((n_labels, n_rows, n_cols), NODATA, dtype=np.float32)
    if not len(table):
        return grid
    rows = np.asarray(table.row, dtype=np.int64)
    cols = np.asarray(table.col, dtype=np.int64)
    outside = (rows < 0) | (rows >= n_rows) | (cols < 0) | (cols >= n_cols)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise ValueError(f"chip at grid row {rows[i]}, col {cols[i]} lies outside the {n_rows}x{n_cols} grid")
    flat = rows * n_cols + cols
    uniq, counts = np.unique(flat, return_counts=True)
    if (counts > 1).any():
        dup = int(uniq[counts > 1][0])
        raise ValueError(f"grid position row {dup // n_cols}, col {dup % n_cols} has {counts.max()} chips")
    grid[:, rows, cols] = np.asarray(table.probs, dtype=np.float32).T
    return grid


def write_probability_raster(
    out: str | Path,
    table: ChipTable,
    labels: Sequence[str],
    n_rows: int,
    n_cols: int,
    transform: Affine,
    crs: CRS | str,
    *,
    tags: Mapping[str, str] | None = None,
    style: bool = True,
    replace: bool = False,
) -> Path:
    """Write the chip probabilities of ``table`` as a COG at ``out``, replacing it; returns ``out``.

    ``tags`` are added to the dataset metadata (e.g. the run id or signature).
    With ``style``, the QGIS heat-map style goes beside it as :func:`style_path`.
    An existing ``out`` is replaced only with ``replace`` (else
    :class:`OutputExistsError`); without it, a style that appeared meanwhile is kept.
    """
    out = Path(out)
    labels = tuple(labels)
    if not labels:
        raise ValueError("no labels: the raster needs one band per label")
    data = probability_grid(table, len(labels), n_rows, n_cols)
    qml = style_path(out)
    profile = dict(driver="COG", width=n_cols, height=n_rows, count=len(labels), dtype="float32",
                   crs=CRS.from_user_input(crs), transform=transform, nodata=NODATA, **COG_OPTIONS)
    try:
        with atomic_path(out, replace=replace) as tmp:
            try:
                with rasterio.open(tmp, "w", **profile) as dst:
                    dst.write(data)
                    for i, label in enumerate(labels, start=1):
                        dst.set_band_description(i, label)
                        dst.update_tags(i, label=label)
                    dst.update_tags(scenetag_schema_version=str(SCHEMA_VERSION),
                                    scenetag_grid="pixel (row, col) = chip at grid row, col; NaN = no chip",
                                    **{str(k): str(v) for k, v in (tags or {}).items()})
            except (OSError, rasterio.errors.RasterioError) as exc:
                raise write_error(out, exc, tmp) from exc  # judged while the temporary still takes its room
        if style:
            try:
                with atomic_path(qml, replace=replace) as tmp_qml:
                    tmp_qml.write_text(probability_raster_qml(labels[0], band=1), encoding="utf-8")
            except OutputExistsError:  # a style is a sidecar, perhaps the user's: keep it, the raster is written
                log.info("kept the QGIS style %s that is there (--overwrite replaces it)", qml)
    except OutputError:
        raise  # already says what happened (an OSError too, so it must not be wrapped below)
    except (OSError, rasterio.errors.RasterioError) as exc:
        raise write_error(out, exc) from exc
    log.info("wrote %s: %d bands, %dx%d grid, %d of %d positions classified",
             out, len(labels), n_rows, n_cols, len(table), n_rows * n_cols)
    return out
