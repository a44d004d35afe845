"""Write a scene's results as a GeoPackage, atomically.

Everything goes into a temporary file beside the output, which is renamed
over the output only when complete; on any failure (or interrupt) the
temporary file is removed, so a killed job leaves no broken GeoPackage.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import shapely
from affine import Affine
from rasterio.crs import CRS

from model.predictor import tags_from_probs
from model.spec import ModelSpec
from outputs_schema import metadata, styles
from outputs_schema.dissolve import dissolve_windows
from outputs_schema.records import ChipTable
from outputs_schema.schema import (
    CHIP_FIELDS, CHIPS_LAYER, LABEL_FIELDS, RUN_FIELDS, RUNS_LAYER, OutputSchema,
    tag_names,
)
from scenetag.atomic import atomic_path
from scenetag.errors import OutputError, OutputExistsError

log = logging.getLogger(__name__)

#: GeoPackage version written.  GDAL >= 3.7 writes 1.4 by default, which QGIS
#: 3.22 (GDAL 3.6) warns about on every open; 1.2 is read cleanly everywhere.
GPKG_VERSION = "1.2"


def check_output(path: str | Path, overwrite: bool) -> Path:
    """Refuse an existing output (unless ``overwrite``) or an unwritable folder, before any work."""
    out = Path(path)
    if out.suffix.lower() != ".gpkg":
        raise OutputError(f"output {str(out)!r} must end in .gpkg")
    if out.exists() and not overwrite:
        raise OutputExistsError(f"output {str(out)!r} exists: pass --overwrite to replace it")
    if out.is_dir():
        raise OutputError(f"output {str(out)!r} is a folder: give a .gpkg file name")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"output folder {str(folder)!r} does not exist: create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"output folder {str(folder)!r} is not writable: choose another with -o")
    return out


def footprints(table: ChipTable, transform: Affine) -> np.ndarray:
    """Polygons of the chip windows in the scene's CRS (exact under any affine)."""
    x0 = table.x_off.astype(np.float64)
    y0 = table.y_off.astype(np.float64)
    x1 = x0 + table.width
    y1 = y0 + table.height
    a, b, c, d, e, f = transform.a, transform.b, transform.c, transform.d, transform.e, transform.f
    cols = np.stack([x0, x1, x1, x0, x0], axis=1)
    rows = np.stack([y0, y0, y1, y1, y0], axis=1)
    xs = a * cols + b * rows + c
    ys = d * cols + e * rows + f
    coords = np.stack([xs, ys], axis=2)
    polys = shapely.polygons(coords)
    # Normalise orientation (north-up rasters give clockwise rings).
    return shapely.orient_polygons(polys) if hasattr(shapely, "orient_polygons") else polys


def chips_frame(table: ChipTable, schema: OutputSchema, spec: ModelSpec, scene_id: str,
                transform: Affine, crs: CRS) -> gpd.GeoDataFrame:
    """The ``chips`` layer as a GeoDataFrame with the declared columns."""
    probs = table.probs
    tagged = tags_from_probs(probs, spec)
    labels = np.asarray(spec.labels, dtype=object)
    tag_words = np.asarray(tag_names(spec.labels), dtype=object)
    tags = [" ".join(tag_words[row]) for row in tagged]
    top = probs.argmax(axis=1) if len(probs) else np.zeros(0, int)
    data: dict[str, Any] = {
        "scene_id": np.full(len(table), scene_id, dtype=object),
        "row": table.row, "col": table.col, "x_off": table.x_off, "y_off": table.y_off,
        "width": table.width, "height": table.height,
        "valid_fraction": table.valid_fraction,
        "tags": np.asarray(tags, dtype=object),
        "n_tags": tagged.sum(axis=1).astype(np.int32),
        "top_label": labels[top] if len(probs) else np.zeros(0, object),
        "top_prob": probs.max(axis=1) if len(probs) else np.zeros(0, np.float32),
    }
    for col, i in zip(schema.prob_columns, range(probs.shape[1])):
        data[col] = probs[:, i]
    frame = pd.DataFrame(data, columns=list(schema.chip_columns))
    for f in CHIP_FIELDS:
        if f.dtype != "str":
            frame[f.name] = frame[f.name].astype(f.dtype)
    return gpd.GeoDataFrame(frame, geometry=footprints(table, transform), crs=crs.to_wkt())


def label_frame(label: str, mask: np.ndarray, probs: np.ndarray, table: ChipTable,
                transform: Affine, crs: CRS) -> gpd.GeoDataFrame:
    """One label's dissolved footprint (zero or one MultiPolygon feature).

    ``mask`` selects the label's chips of ``table``; their windows are
    dissolved exactly (see :func:`outputs_schema.dissolve.dissolve_windows`)
    in the scene's CRS, where ``area`` is measured.
    """
    if not mask.any():
        frame = pd.DataFrame({f.name: pd.Series(dtype=("object" if f.dtype == "str" else f.dtype))
                              for f in LABEL_FIELDS})
        return gpd.GeoDataFrame(frame, geometry=gpd.GeoSeries([], crs=crs.to_wkt()), crs=crs.to_wkt())
    union = dissolve_windows(table.x_off[mask], table.y_off[mask], table.width[mask],
                             table.height[mask], transform)
    frame = pd.DataFrame({
        "label": [label], "n_chips": np.asarray([mask.sum()], np.int32),
        "area": [float(union.area)], "mean_prob": np.asarray([probs[mask].mean()], np.float32),
    })
    return gpd.GeoDataFrame(frame, geometry=[union], crs=crs.to_wkt())


def runs_frame(run: Mapping[str, Any]) -> pd.DataFrame:
    """The ``runs`` row, with every declared field present and typed."""
    missing = [f.name for f in RUN_FIELDS if f.name not in run]
    if missing:
        raise ValueError(f"run record lacks fields {missing}")
    row = {}
    for f in RUN_FIELDS:
        value = run[f.name]
        if f.dtype == "str" and not isinstance(value, str):
            value = "" if value is None else json.dumps(value, sort_keys=True)
        row[f.name] = [value]
    frame = pd.DataFrame(row)
    for f in RUN_FIELDS:
        if f.dtype != "str":
            frame[f.name] = frame[f.name].astype(f.dtype)
    return frame


def write_geopackage(
    out: str | Path,
    *,
    table: ChipTable,
    spec: ModelSpec,
    scene_id: str,
    transform: Affine,
    crs: CRS,
    run: Mapping[str, Any],
    overwrite: bool = False,
    to_crs: CRS | None = None,
) -> Path:
    """Write ``chips``, one ``label_<name>`` layer per label and ``runs`` to ``out``, atomically.

    ``run`` is the provenance row (see :data:`RUN_FIELDS`); its
    ``seconds_write`` is set here, and added to ``seconds_total``.
    """
    out = check_output(out, overwrite)
    schema = OutputSchema(spec.labels)
    chips = chips_frame(table, schema, spec, scene_id, transform, crs)
    tagged = tags_from_probs(table.probs, spec)
    # Label layers are dissolved (and their areas measured) in the scene's CRS.
    label_frames = [label_frame(label, tagged[:, i], table.probs[:, i], table, transform, crs)
                    for i, label in enumerate(spec.labels)]
    if to_crs is not None:
        chips = chips.to_crs(to_crs.to_wkt())
        label_frames = [f.to_crs(to_crs.to_wkt()) for f in label_frames]
    run = dict(run)
    t0 = time.perf_counter()
    try:
        with atomic_path(out) as tmp:
            _write(tmp, chips, CHIPS_LAYER, "Polygon", dataset_options={"VERSION": GPKG_VERSION})
            for frame, layer in zip(label_frames, schema.label_layers):
                _write(tmp, frame, layer, "MultiPolygon")
            # The provenance row is written last, so it can time the layers before it.
            elapsed = time.perf_counter() - t0
            run["seconds_write"] = elapsed
            run["seconds_total"] = float(run.get("seconds_total") or 0.0) + elapsed
            _write(tmp, runs_frame(run), RUNS_LAYER, None)
            styles.add_styles(tmp, schema, spec)
            metadata.add_metadata(tmp, schema, spec, run)
    except OSError as exc:
        raise OutputError(f"could not write {str(out)!r}: {exc}") from exc
    except pyogrio.errors.DataSourceError as exc:
        raise OutputError(f"could not write {str(out)!r}: {exc}") from exc
    log.info("wrote %s: %d chips, %d label layers", out, len(table), len(schema.label_layers))
    return out


def _write(path: Path, frame: pd.DataFrame, layer: str, geometry_type: str | None,
           dataset_options: Mapping[str, str] | None = None) -> None:
    kwargs: dict[str, Any] = {"layer": layer, "driver": "GPKG"}
    if geometry_type is not None:
        kwargs["geometry_type"] = geometry_type
    if dataset_options and not path.exists():
        kwargs["dataset_options"] = dict(dataset_options)
    pyogrio.write_dataframe(frame, path, **kwargs)

