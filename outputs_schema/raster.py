"""The probability raster (``--raster``): a Cloud Optimized GeoTIFF heat map.

One float32 band per label, band description = the label name; one pixel per
position of the chip grid: pixel ``(r, c)`` holds the probabilities of the chip
at grid row ``r``, column ``c`` (``ChipTable.row`` / ``.col``).  Grid positions
without a classified chip (skipped for too little valid area) are
:data:`NODATA`, which is NaN and declared as the nodata value.

Georeferencing is the caller's ``transform`` of the grid, normally
``scene_transform @ Affine.scale(stride)`` (``*`` in older affine), with the
stride in scene pixels.  Pixel ``(r, c)`` then starts at scene pixel
``(r * stride, c * stride)``, where its chip starts, and is one stride wide:

* where chips overlap (stride < chip), a pixel covers only the first
  ``stride`` pixels of its chip;
* under the ``shift`` edge policy the last row and column of chips were moved
  back to end on the scene's edge, so their pixels lie up to one stride further
  right or down than the chips that were read (the ``pad`` and ``skip``
  policies keep every chip on the stride grid).

The raster stays in the scene's CRS even when the vectors are reprojected
(``--to-crs``): resampling probabilities would invent values.

The file is written under a temporary name beside ``out`` and renamed when
complete, so a killed job leaves no half-written raster.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS

from outputs_schema.records import ChipTable
from outputs_schema.schema import SCHEMA_VERSION
from scenetag.errors import OutputError, OutputExistsError

log = logging.getLogger(__name__)

#: Value of grid positions without a classified chip.
NODATA = float("nan")

#: GDAL COG creation options: lossless, float predictor, overviews when large enough.
COG_OPTIONS = {"COMPRESS": "DEFLATE", "PREDICTOR": "YES", "BLOCKSIZE": "256", "OVERVIEWS": "AUTO",
               "RESAMPLING": "AVERAGE"}


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
    overwrite: bool = False,
    tags: Mapping[str, str] | None = None,
) -> Path:
    """Write the chip probabilities of ``table`` as a COG at ``out``; returns ``out``.

    ``tags`` are added to the dataset metadata (e.g. the run id or signature).
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"raster {str(out)!r} exists: pass --overwrite to replace it")
    labels = tuple(labels)
    if not labels:
        raise ValueError("no labels: the raster needs one band per label")
    data = probability_grid(table, len(labels), n_rows, n_cols)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:12]}.tmp.tif")
    profile = dict(driver="COG", width=n_cols, height=n_rows, count=len(labels), dtype="float32",
                   crs=CRS.from_user_input(crs), transform=transform, nodata=NODATA, **COG_OPTIONS)
    try:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(data)
            for i, label in enumerate(labels, start=1):
                dst.set_band_description(i, label)
                dst.update_tags(i, label=label)
            dst.update_tags(scenetag_schema_version=str(SCHEMA_VERSION),
                            scenetag_grid="pixel (row, col) = chip at grid row, col; NaN = no chip",
                            **{str(k): str(v) for k, v in (tags or {}).items()})
        os.replace(tmp, out)
    except (OSError, rasterio.errors.RasterioError) as exc:
        raise OutputError(f"could not write {str(out)!r}: {exc}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    log.info("wrote %s: %d bands, %dx%d grid, %d of %d positions classified",
             out, len(labels), n_rows, n_cols, len(table), n_rows * n_cols)
    return out
