"""The probability raster (``--raster``): a Cloud Optimized GeoTIFF heat map.

One float32 band per label, band description = the label name.  Places with
no classified chip (skipped for too little valid area, or past the last chip
under ``--edge skip``) are :data:`NODATA`, which is NaN and declared as the
nodata value.

What the job writes (:func:`scene_layout`) covers the scene and nothing
beyond it.  Each chip of the grid owns a cell of the scene: along each axis,
its middle stride (``[k * stride + o, (k + 1) * stride + o)``, ``o = (chip -
stride) / 2``, so without overlap a cell is its chip), the first cell reaching
back to the scene's start and the last one ending where the last chip's
window ends (the scene's edge, under ``shift`` and ``pad``).  A shifted edge
chip thus owns only the strip its neighbour did not read, as the ``chips``
style draws it.  The raster's pixels are ``d`` scene pixels square, ``d`` the
greatest common divisor of the cell edges (the stride when the grid fits the
scene), so cells are whole pixels; where that would make pixels finer than
:data:`MAX_SUBDIVISION` per stride, ``d`` is ``ceil(stride /
MAX_SUBDIVISION)``, each pixel takes the cell its centre lies in, and the
raster ends up to ``d - 1`` scene pixels short of the right and bottom edges.

The lower-level writer also takes a grid as is, one pixel per grid position
(pixel ``(r, c)`` = chip at grid row ``r``, column ``c``; ``ChipTable.row`` /
``.col``), georeferenced by :func:`grid_transform`; there the last row and
column, under ``shift`` and ``pad``, reach past the scene's edge.

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
import math
from dataclasses import dataclass
from functools import reduce
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


#: Finest raster pixel, as a fraction of the stride (bounds the raster at 64x the grid's pixels).
MAX_SUBDIVISION = 8


@dataclass(frozen=True)
class RasterLayout:
    """Where the raster's pixels lie and which grid position each shows.

    ``row_of[i]`` is the grid row shown by raster row ``i`` and ``col_of[j]``
    the grid column shown by raster column ``j``; -1 shows none (NaN).
    """

    transform: Affine
    row_of: np.ndarray
    col_of: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` of the raster in pixels."""
        return len(self.row_of), len(self.col_of)


def cell_edges(length: int, n: int, stride: int, chip: int) -> np.ndarray:
    """The ``n + 1`` edges of the cells the ``n`` chips of one axis own, in scene pixels (see the module)."""
    if n < 1 or length < 1 or stride < 1 or chip < stride:
        raise ValueError(f"cells need n >= 1, length >= 1 and 1 <= stride <= chip, got {n}, {length}, {stride}, "
                         f"{chip}")
    o = (chip - stride) // 2
    inner = [k * stride + o for k in range(1, n)]
    return np.asarray([0, *inner, min(length, (n - 1) * stride + chip)], np.int64)


def _owners(edges: np.ndarray, n_pixels: int, d: int) -> np.ndarray:
    """The cell each of ``n_pixels`` pixels of ``d`` scene pixels lies in (by its centre); -1 past the last."""
    centres = (np.arange(n_pixels) + 0.5) * d
    owner = np.searchsorted(edges, centres, side="right") - 1
    return np.where(owner < len(edges) - 1, owner, -1)


def scene_layout(scene_transform: Affine, scene_shape: tuple[int, int], grid_shape: tuple[int, int],
                 stride: int, chip: int) -> RasterLayout:
    """The raster over the scene: cells of the chips, in pixels of ``d`` scene pixels (see the module).

    ``scene_shape`` and ``grid_shape`` are ``(rows, cols)``; ``stride`` and
    ``chip`` in scene pixels.
    """
    (height, width), (n_rows, n_cols) = scene_shape, grid_shape
    rows = cell_edges(height, n_rows, stride, chip)
    cols = cell_edges(width, n_cols, stride, chip)
    exact = reduce(math.gcd, (int(e) for e in (*rows, *cols, height, width)))
    d = max(exact, math.ceil(stride / MAX_SUBDIVISION))
    return RasterLayout(scene_transform @ Affine.scale(d), _owners(rows, height // d, d),
                        _owners(cols, width // d, d))


def grid_layout(n_rows: int, n_cols: int, transform: Affine) -> RasterLayout:
    """One pixel per grid position, georeferenced by ``transform`` (:func:`grid_transform`)."""
    return RasterLayout(transform, np.arange(n_rows), np.arange(n_cols))


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
    layout: RasterLayout | None = None,
) -> Path:
    """Write the chip probabilities of ``table`` as a COG at ``out``, replacing it; returns ``out``.

    The grid is ``n_rows`` x ``n_cols``; ``layout`` says where its positions
    are drawn (:func:`scene_layout`), by default one pixel each under
    ``transform`` (:func:`grid_layout`).

    ``tags`` are added to the dataset metadata (e.g. the run id or signature).
    With ``style``, the QGIS heat-map style goes beside it as :func:`style_path`.
    An existing ``out`` is replaced only with ``replace`` (else
    :class:`OutputExistsError`); without it, a style that appeared meanwhile is kept.
    """
    out = Path(out)
    labels = tuple(labels)
    if not labels:
        raise ValueError("no labels: the raster needs one band per label")
    layout = layout or grid_layout(n_rows, n_cols, transform)
    grid = probability_grid(table, len(labels), n_rows, n_cols)
    # One NaN row and column at index -1, for the pixels that show no grid position.
    padded = np.pad(grid, ((0, 0), (0, 1), (0, 1)), constant_values=NODATA)
    data = padded[:, layout.row_of[:, None], layout.col_of[None, :]]
    qml = style_path(out)
    height, width = layout.shape
    profile = dict(driver="COG", width=width, height=height, count=len(labels), dtype="float32",
                   crs=CRS.from_user_input(crs), transform=layout.transform, nodata=NODATA, **COG_OPTIONS)
    try:
        with atomic_path(out, replace=replace) as tmp:
            try:
                with rasterio.open(tmp, "w", **profile) as dst:
                    dst.write(data)
                    for i, label in enumerate(labels, start=1):
                        dst.set_band_description(i, label)
                        dst.update_tags(i, label=label)
                    dst.update_tags(scenetag_schema_version=str(SCHEMA_VERSION),
                                    scenetag_grid="each chip's values over the cell of the scene it owns; "
                                                  "NaN = no chip" if layout.shape != (n_rows, n_cols) else
                                                  "pixel (row, col) = chip at grid row, col; NaN = no chip",
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
    log.info("wrote %s: %d bands, %dx%d pixels for a %dx%d grid, %d of %d positions classified",
             out, len(labels), width, height, n_cols, n_rows, len(table), n_rows * n_cols)
    return out
