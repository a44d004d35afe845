"""The GeoPackage format: a scene's results as layers of :mod:`~scenetag.outputs_schema.schema`, atomically.

Everything goes into a temporary file beside the output, which is renamed
over the output only when complete; on any failure (or interrupt) the
temporary file is removed, so a killed job leaves no broken GeoPackage.

This module writes; whether the output may be written (an existing file,
the folder) is decided before any work by
:class:`~scenetag.outputs_schema.outputs.SceneOutputs`, which calls it.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import shapely
from affine import Affine
from rasterio.crs import CRS

from scenetag.model.spec import ModelSpec
from scenetag.outputs_schema import metadata, project, styles
from scenetag.outputs_schema.area import area_m2
from scenetag.outputs_schema.dissolve import dissolve_windows
from scenetag.outputs_schema.records import ChipTable, top_and_weather
from scenetag.outputs_schema.run_record import RunRecord
from scenetag.outputs_schema.schema import (
    CHIP_FIELDS, CHIPS_LAYER, LABEL_FIELDS, RUN_FIELDS, RUNS_LAYER, Field, OutputSchema, tag_names,
)
from scenetag.atomic import discard, publish, temporary_name
from scenetag.errors import OutputError
from scenetag.outputs_schema.write_errors import write_error

log = logging.getLogger(__name__)

#: GeoPackage version written.  GDAL >= 3.7 writes 1.4 by default, which QGIS
#: 3.22 (GDAL 3.6) warns about on every open; 1.2 is read cleanly everywhere.
GPKG_VERSION = "1.2"


def footprints(table: ChipTable, transform: Affine) -> np.ndarray:
    """Polygons of the chip windows in the scene's CRS (exact under any affine)."""
    x0 = table.x_off.astype(np.float64)
    y0 = table.y_off.astype(np.float64)
    x1 = x0 + table.width
    y1 = y0 + table.height
    cols = np.stack([x0, x1, x1, x0, x0], axis=1)
    rows = np.stack([y0, y0, y1, y1, y0], axis=1)
    polys = shapely.polygons(np.stack(transform @ (cols, rows), axis=2))
    # Normalise orientation (north-up rasters give clockwise rings).
    return shapely.orient_polygons(polys)


def _typed(data: Mapping[str, Any], fields: tuple[Field, ...],
           columns: Sequence[str] | None = None) -> pd.DataFrame:
    """``data`` as a frame of ``columns`` (default: the names of ``fields``), in order, with
    each of ``fields`` of its declared dtype."""
    frame = pd.DataFrame(data, columns=list(columns or (f.name for f in fields)))
    return frame.astype({f.name: f.storage_dtype for f in fields if f.storage_dtype != "str"})


def grid_stride(table: ChipTable) -> int | None:
    """The stride of the grid ``table``'s chips lie on, from the chips themselves (None for one chip).

    A chip on the grid starts at ``index * stride``; a chip shifted back onto
    the scene's edge starts before that, and a padded one exactly there, so the
    largest ``offset / index`` is the stride wherever one chip beyond the first
    row or column is on the grid.
    """
    ratios = [table.x_off[table.col > 0] / table.col[table.col > 0],
              table.y_off[table.row > 0] / table.row[table.row > 0]]
    ratios = np.concatenate(ratios)
    return int(round(float(ratios.max()))) if len(ratios) else None


def shifted_chips(table: ChipTable, stride: int | None = None) -> np.ndarray:
    """Which chips were moved back from their grid position (``--edge shift``); ``stride`` in scene
    pixels, by default :func:`grid_stride` of the table."""
    stride = grid_stride(table) if stride is None else stride
    if stride is None:
        return np.zeros(len(table), bool)
    return (table.x_off != table.col * stride) | (table.y_off != table.row * stride)


def chips_frame(table: ChipTable, schema: OutputSchema, tagged: np.ndarray, scene_id: str,
                transform: Affine, crs: CRS, stride: int | None = None,
                spec: ModelSpec | None = None) -> gpd.GeoDataFrame:
    """The ``chips`` layer as a GeoDataFrame with the declared columns; ``tagged`` is
    :meth:`ModelSpec.tags` of the table, ``stride`` the grid's (see :func:`shifted_chips`);
    ``spec``'s groups say which labels are weather."""
    probs = table.probs
    # " w1 w2" per chip (a space before each tag word), so the row sums join the words.
    spaced = np.where(tagged, " " + np.asarray(tag_names(schema.labels), dtype=object), "")
    top_label, top_prob, weather = top_and_weather(
        probs, tagged, schema.labels, spec.weather_labels if spec else (), spec.grouped_labels if spec else ())
    data: dict[str, Any] = {
        "scene_id": np.full(len(table), scene_id, dtype=object),
        "row": table.row, "col": table.col, "x_off": table.x_off, "y_off": table.y_off,
        "width": table.width, "height": table.height, "shifted": shifted_chips(table, stride),
        "valid_fraction": table.valid_fraction,
        "tags": np.asarray([t[1:] for t in spaced.sum(axis=1)], dtype=object),
        "n_tags": tagged.sum(axis=1),
        "top_label": top_label,
        "top_prob": top_prob,
        "weather": weather,
        **dict(zip(schema.prob_columns, probs.T)),
    }
    return gpd.GeoDataFrame(_typed(data, CHIP_FIELDS, schema.chip_columns),
                            geometry=footprints(table, transform), crs=crs.to_wkt())


def label_frame(label: str, mask: np.ndarray, probs: np.ndarray, table: ChipTable,
                transform: Affine, crs: CRS) -> gpd.GeoDataFrame:
    """One label's dissolved footprint (zero or one MultiPolygon feature).

    ``mask`` selects the label's chips of ``table`` and ``probs`` is the
    label's probability per chip; the windows are dissolved exactly (see
    :func:`outputs_schema.dissolve.dissolve_windows`) in the scene's CRS,
    where ``area_m2`` is measured (:func:`~scenetag.outputs_schema.area.area_m2`).
    """
    wkt = crs.to_wkt()
    if not mask.any():
        data, geoms = {}, []
    else:
        union = dissolve_windows(table.x_off[mask], table.y_off[mask], table.width[mask],
                                 table.height[mask], transform)
        data = {"label": [label], "n_chips": [mask.sum()], "area_m2": [area_m2(union, wkt)],
                "mean_prob": [probs[mask].mean()]}
        geoms = [union]
    return gpd.GeoDataFrame(_typed(data, LABEL_FIELDS), geometry=gpd.GeoSeries(geoms, crs=wkt), crs=wkt)


def runs_frame(run: RunRecord) -> pd.DataFrame:
    """The ``runs`` table of one row, typed as declared."""
    return _typed({name: [value] for name, value in run.to_row().items()}, RUN_FIELDS)


#: Errors a write can fail with; a full disk fails in any of them (FeatureError too).
_WRITING = (OSError, sqlite3.Error, pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError,
            pyogrio.errors.FieldError)


class GeoPackageWriter:
    """One scene's GeoPackage, written into a temporary file: chips in parts, then the rest, then renamed.

    :meth:`append` adds chips to the ``chips`` layer, in the order given (the
    caller's: :class:`~scenetag.outputs_schema.stream.ChipStream` keeps grid
    order); :meth:`finish` writes the label layers, ``runs``, styles, metadata and
    the QGIS project and gives the file its name (:func:`~scenetag.atomic.publish`:
    without ``replace`` never over an existing file); :meth:`abort` (also on leaving
    a ``with`` block with an error) removes the temporary file.  A killed writer
    leaves only the temporary, named after its pid, which
    :func:`~scenetag.jobs.sweep.sweep_leftovers` removes later.  ``stride`` is the
    grid's, in scene pixels (it marks the shifted chips, so each part needs it).
    ``tmp`` is the temporary's name, where the caller chose it (:func:`~scenetag.atomic.temporary_name`:
    a scene whose parts are written by several processes, :meth:`resume`).
    """

    def __init__(self, out: str | Path, *, spec: ModelSpec, scene_id: str, transform: Affine, crs: CRS,
                 stride: int | None, to_crs: CRS | None = None, replace: bool = False,
                 tmp: str | Path | None = None) -> None:
        self.out = Path(out)
        self.tmp = temporary_name(self.out) if tmp is None else Path(tmp)
        self.spec, self.scene_id, self.transform, self.crs = spec, scene_id, transform, crs
        self.stride, self.to_crs, self.replace = stride, to_crs, replace
        self.schema = OutputSchema(spec.labels)
        self.n_written = 0
        #: Seconds spent in :meth:`append` (frames and writes).
        self.seconds_appending = 0.0
        self._started = False
        self._bounds: np.ndarray | None = None  # the chips' total bounds, in the output CRS

    @property
    def bounds(self) -> tuple[float, float, float, float] | None:
        """The bounds of the chips written so far, in the output CRS (None before any chip)."""
        return None if self._bounds is None else tuple(float(v) for v in self._bounds)

    def written(self) -> int | None:
        """How many chips the temporary file's ``chips`` layer holds (None: no file, or no layer yet).

        Read from the file, so it counts what another process appended too; a
        transaction that a killed writer left unfinished is rolled back first
        (SQLite does so on the first read).
        """
        if not self.tmp.is_file():
            return None
        try:
            con = sqlite3.connect(str(self.tmp))
            try:
                return int(con.execute(f'SELECT count(*) FROM "{CHIPS_LAYER}"').fetchone()[0])
            finally:
                con.close()
        except sqlite3.Error:  # no chips layer yet (a first append cut short), or no GeoPackage at all
            return None

    def resume(self, n_written: int, bounds: tuple[float, float, float, float] | None) -> None:
        """Go on with the ``chips`` layer of ``n_written`` chips within ``bounds`` that another writer (another
        process: :func:`~scenetag.outputs_schema.stream.append_part`) made in ``tmp`` (:meth:`written` said so)."""
        self._started = True
        self.n_written = n_written
        self._bounds = None if bounds is None else np.asarray(bounds, dtype=float)

    def frame(self, table: ChipTable) -> gpd.GeoDataFrame:
        """``table``'s chips as the ``chips`` layer has them (in the output CRS)."""
        chips = chips_frame(table, self.schema, self.spec.tags(table.probs), self.scene_id, self.transform,
                            self.crs, self.stride, self.spec)
        return chips.to_crs(self.to_crs.to_wkt()) if self.to_crs is not None else chips

    def include(self, chips: gpd.GeoDataFrame) -> None:
        """Widen :attr:`bounds` by ``chips`` (written by an earlier try of this part, say)."""
        if len(chips):
            b = chips.total_bounds
            self._bounds = b if self._bounds is None else np.r_[np.minimum(self._bounds[:2], b[:2]),
                                                                 np.maximum(self._bounds[2:], b[2:])]

    def append(self, table: ChipTable) -> None:
        """Add ``table``'s chips to the ``chips`` layer, after those already there (the first call creates it)."""
        if self._started and not len(table):
            return
        t0 = time.perf_counter()
        chips = self.frame(table)
        self.include(chips)
        try:
            if not self._started:
                self._started = True
                _write(self.tmp, chips, CHIPS_LAYER, "Polygon", dataset_options={"VERSION": GPKG_VERSION})
            else:
                _write(self.tmp, chips, CHIPS_LAYER, "Polygon", append=True)
        except _WRITING as exc:
            raise self._error(exc) from exc
        self.n_written += len(table)
        self.seconds_appending += time.perf_counter() - t0

    def finish(self, table: ChipTable, run: RunRecord, before: float = 0.0) -> RunRecord:
        """Write the rest from ``table`` (every chip of the scene, in grid order) and name the file; the record written.

        ``run`` gets ``seconds_write``: the time of this call plus ``before`` (the
        caller's own part of the write that nothing overlapped), also added to its
        ``seconds_total``.
        Raises :class:`OutputExistsError` without ``replace`` when the output
        exists now; on any error nothing is left.
        """
        t0 = time.perf_counter()
        try:
            if not self._started:
                self.append(ChipTable.empty(self.spec.n_labels))
            tagged = self.spec.tags(table.probs)
            # Label layers are dissolved (and their areas measured) in the scene's CRS.
            label_frames = [label_frame(label, tagged[:, i], table.probs[:, i], table, self.transform, self.crs)
                            for i, label in enumerate(self.spec.labels)]
            if self.to_crs is not None:
                label_frames = [f.to_crs(self.to_crs.to_wkt()) for f in label_frames]
            try:
                # One SQLite connection to the file after GDAL's writes of the chips: the label layers,
                # then (beside GDAL's write of ``runs``) the styles and metadata.
                con = sqlite3.connect(str(self.tmp), isolation_level=None)
                try:
                    _write_label_layers(con, self.tmp, label_frames, self.schema.label_layers)
                    # The provenance row is written last, so it can time the layers before it.
                    elapsed = before + time.perf_counter() - t0
                    run = run.replace(seconds_write=elapsed, seconds_total=run.seconds_total + elapsed)
                    _write(self.tmp, runs_frame(run), RUNS_LAYER)
                    _add_styles_and_metadata(con, self.spec, run)
                    extent = tuple(self._bounds) if self._bounds is not None else None
                    project.add_project(con, self.out, self.spec, run, self.crs, self.to_crs or self.crs, extent)
                finally:
                    con.close()
            except _WRITING as exc:
                raise self._error(exc) from exc  # judged while the temporary still takes its room
            try:
                publish(self.tmp, self.out, self.replace)
            except OutputError:
                raise  # already says what happened (an OSError too, so it must not be wrapped below)
            except _WRITING as exc:
                raise write_error(self.out, exc) from exc
        finally:
            self.abort()  # after the rename: only sidecars, if anything
        log.info("wrote %s: %d chips, %d label layers", self.out, len(table), len(self.schema.label_layers))
        return run

    def _error(self, exc: Exception) -> Exception:
        return write_error(self.out, exc, self.tmp)

    def abort(self) -> None:
        """Remove the temporary file and its sidecars (nothing of the output is left)."""
        discard(self.tmp)

    def __enter__(self) -> "GeoPackageWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            self.abort()


def write_geopackage(
    out: str | Path,
    *,
    table: ChipTable,
    spec: ModelSpec,
    scene_id: str,
    transform: Affine,
    crs: CRS,
    run: RunRecord,
    to_crs: CRS | None = None,
    replace: bool = False,
    stride: int | None = None,
) -> RunRecord:
    """Write ``chips``, one ``label_<name>`` layer per label and ``runs`` to ``out``, atomically, at once.

    Replaces an existing ``out`` only with ``replace``; without it one that
    exists when the write ends is kept and :class:`OutputExistsError` raised
    (:func:`~scenetag.atomic.publish`).  Returns the record written: ``run`` with
    ``seconds_write`` set to the time of this write, which is also added to
    ``seconds_total``.  Tags are ``spec``'s (:meth:`ModelSpec.tags`).  ``stride`` is the
    grid's, in scene pixels, which marks the shifted chips (default: found from the chips).
    This is :class:`GeoPackageWriter` given every chip in one part.
    """
    t0 = time.perf_counter()
    with GeoPackageWriter(out, spec=spec, scene_id=scene_id, transform=transform, crs=crs,
                          stride=grid_stride(table) if stride is None else stride, to_crs=to_crs,
                          replace=replace) as writer:
        writer.append(table)
        return writer.finish(table, run, before=time.perf_counter() - t0)


def _add_styles_and_metadata(con: sqlite3.Connection, spec: ModelSpec, run: RunRecord) -> None:
    """QGIS styles and the metadata documents (each commits its own transaction)."""
    con.isolation_level = ""  # sqlite3's implicit transactions, which their ``with con:`` commit
    styles.add_styles(con, spec)
    metadata.add_metadata(con, spec, run)


def _write_label_layers(con: sqlite3.Connection, path: Path, frames: Sequence[gpd.GeoDataFrame],
                        layers: Sequence[str]) -> None:
    """Add one layer per label to the GeoPackage at ``path`` (``con``, in autocommit), linear in the labels.

    GDAL's open of a GeoPackage reads every layer in it, so writing layer
    after layer into one file (one open each) is quadratic: 500 labels took
    minutes.  Each label layer is written alone into a small GeoPackage of
    its own (an open of constant cost) and copied into ``path`` with SQLite,
    table, spatial index, triggers and registrations as GDAL wrote them
    (:func:`_copy_layer`).
    """
    one = Path(str(path) + ".layer.gpkg")
    try:
        # One transaction for every layer: a commit per layer costs more with every layer already there.
        con.execute("BEGIN")
        for frame, layer in zip(frames, layers):
            _write(one, frame, layer, "MultiPolygon", dataset_options={"VERSION": GPKG_VERSION})
            _copy_layer(con, one, layer)
            one.unlink()
        con.execute("COMMIT")
    finally:
        if con.in_transaction:
            con.execute("ROLLBACK")
        discard(one)


#: Per-layer rows of the GeoPackage's registry tables (those present in both files are copied).
_REGISTRY_TABLES = ("gpkg_contents", "gpkg_geometry_columns", "gpkg_extensions", "gpkg_ogr_contents")


def _copy_layer(con: sqlite3.Connection, src: Path, layer: str) -> None:
    """Copy ``layer`` of the one-layer GeoPackage ``src`` into ``con``'s, exactly as GDAL wrote it.

    The schema objects are GDAL's own SQL (the table, its R-tree and its
    triggers); the rows are copied before the triggers exist, so they fire
    for no row twice.  ``src`` is read on a connection of its own: attaching
    it would make SQLite re-read ``con``'s whole schema on every detach,
    which is again quadratic.  The spatial reference must mean the same in
    both files (it does: ``chips`` is written first in the same CRS); a
    difference is refused rather than mislabelled.
    """
    other = sqlite3.connect(str(src))
    try:
        for srs in other.execute("SELECT * FROM gpkg_spatial_ref_sys WHERE srs_id IN "
                                 "(SELECT srs_id FROM gpkg_geometry_columns)").fetchall():
            srs_id, definition = srs[1], srs[4]  # srs_name, srs_id, organization, org id, definition, ...
            mine = con.execute("SELECT definition FROM gpkg_spatial_ref_sys WHERE srs_id = ?", (srs_id,)).fetchone()
            if mine is None:
                con.execute(f"INSERT INTO gpkg_spatial_ref_sys VALUES ({', '.join('?' * len(srs))})", srs)
            elif mine[0] != definition:
                raise OutputError(f"layer {layer!r}: spatial reference {srs_id} differs from the chips layer's")
        rtree = f"rtree_{layer}_"
        objects = other.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL AND (tbl_name = ? OR "
            "substr(tbl_name, 1, ?) = ?) ORDER BY rowid", (layer, len(rtree), rtree)).fetchall()
        # An R-tree's shadow tables (_node, _parent, _rowid) come with its CREATE VIRTUAL TABLE.
        virtual = [name for kind, name, sql in objects if sql.upper().startswith("CREATE VIRTUAL TABLE")]
        tables = [name for kind, name, sql in objects if kind == "table"
                  and not any(name.startswith(v + "_") for v in virtual)]
        for kind, name, sql in objects:
            if name in tables:
                con.execute(sql)
        for name in tables:
            _copy_rows(other, con, f'"{name}"')
        for kind, name, sql in objects:
            if kind in ("index", "trigger"):
                con.execute(sql)
        for registry in _REGISTRY_TABLES:
            if _has_table(other, registry) and _has_table(con, registry):
                _copy_rows(other, con, registry, "WHERE lower(table_name) = lower(?)", (layer,))
    finally:
        other.close()


def _copy_rows(src: sqlite3.Connection, dst: sqlite3.Connection, table: str, where: str = "",
               args: tuple = ()) -> None:
    rows = src.execute(f"SELECT * FROM {table} {where}", args).fetchall()
    if rows:
        dst.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * len(rows[0]))})", rows)


def _has_table(con: sqlite3.Connection, table: str) -> bool:
    return con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone() is not None


def _write(path: Path, frame: pd.DataFrame, layer: str, geometry_type: str | None = None,
           **options: Any) -> None:
    pyogrio.write_dataframe(frame, path, layer=layer, driver="GPKG", geometry_type=geometry_type, **options)
