"""The outputs of one scene: which files, whether they may be written, whether they are current, writing them.

This module is the one owner of a scene's output files.  A scene job uses it
in three steps::

    outputs = SceneOutputs(out, raster=options.raster, to_crs=options.to_crs)
    outputs.refuse_scene(scene)            # first: an output that is the scene itself
    if not force and outputs.up_to_date(signature):
        ...                                # skip the scene (batch)
    if not force:
        outputs.check_source(scene, sha)   # batch: made from another scene of the same name?
    outputs.check(overwrite)               # before any work: refuse, or go on
    ...                                    # plan, classify
    run = outputs.write(table, spec, frame, run)   # every file, atomically each

:class:`SceneOutputs` knows every path it writes (:attr:`~SceneOutputs.paths`):
the GeoPackage (:mod:`~scenetag.outputs_schema.geopackage`) and, with
``raster``, the probability COG beside it (:mod:`~scenetag.outputs_schema.raster`,
``<stem>_prob.tif``, with its QGIS style ``<stem>_prob.qml``).  A new output
format is one more format module and one more path here.

:class:`SceneFrame` is what the writers need of the scene and its chip grid
(this package does not import the tiler).  The format modules are imported
only by :meth:`SceneOutputs.write`, so checking outputs stays light.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from scenetag.errors import OutputError, OutputExistsError
from scenetag.outputs_schema.run_record import RunRecord, read_run_record

if TYPE_CHECKING:  # the writers' stack is imported where it writes
    from affine import Affine
    from rasterio.crs import CRS

    from scenetag.model.spec import ModelSpec
    from scenetag.outputs_schema.records import ChipTable
    from scenetag.outputs_schema.stream import WrittenParts

log = logging.getLogger(__name__)

GPKG_SUFFIX = ".gpkg"
#: Added to the GeoPackage's stem to name the probability COG.
RASTER_SUFFIX = "_prob.tif"


def _same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether ``a`` and ``b`` name one file: the same resolved path, or (both existing) the same inode."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (or cannot be seen): not one file
        return False


#: Default of the ``record`` arguments: read the GeoPackage's record here.
_UNREAD = object()

@dataclass(frozen=True)
class SceneFrame:
    """Where a scene's chips lie: the scene's georeference and its chip grid.

    ``grid_shape`` is ``(rows, cols)`` of the grid; ``stride`` and ``chip`` are
    in scene pixels (``ScenePlan.grid``); ``scene_shape`` is ``(rows, cols)`` of the
    scene, without which the probability raster has one pixel per grid position.
    """

    scene_id: str
    transform: "Affine"
    crs: "CRS"
    grid_shape: tuple[int, int]
    stride: int
    chip: int
    scene_shape: tuple[int, int] | None = None


@dataclass(frozen=True)
class SceneOutputs:
    """The files one scene's run writes: a GeoPackage and, with ``raster``, a probability COG.

    ``to_crs`` (any CRS text rasterio reads) reprojects the vector layers; the
    raster stays in the scene's CRS.  Raises :class:`OutputError` when
    ``gpkg`` does not end in ``.gpkg``.
    """

    gpkg: Path
    raster: bool = False
    to_crs: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "gpkg", Path(self.gpkg))
        if self.gpkg.suffix.lower() != GPKG_SUFFIX:
            raise OutputError(f"output {str(self.gpkg)!r} must end in .gpkg: scenetag writes GeoPackages "
                              "(ogr2ogr converts one to GeoJSON, Shapefile...)")

    @property
    def raster_path(self) -> Path:
        """Where the probability COG goes (written only with ``raster``)."""
        return self.gpkg.with_name(self.gpkg.stem + RASTER_SUFFIX)

    @property
    def paths(self) -> tuple[Path, ...]:
        """Every output file, GeoPackage first (not the raster's QGIS style, which is a sidecar)."""
        return (self.gpkg, self.raster_path) if self.raster else (self.gpkg,)

    def check(self, overwrite: bool) -> None:
        """Refuse, before any work, outputs that exist (unless ``overwrite``) or an unwritable folder.

        Raises :class:`OutputExistsError` or :class:`OutputError`.
        """
        for path in self.paths:
            if path.exists() and not overwrite:
                raise OutputExistsError(f"output {str(path)!r} exists: pass --overwrite to replace it")
            if path.is_dir():
                raise OutputError(f"output {str(path)!r} is a folder: give a .gpkg file name")
        folder = self.gpkg.parent
        if not folder.is_dir():
            raise OutputError(f"output folder {str(folder)!r} does not exist: create it first")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise OutputError(f"output folder {str(folder)!r} is not writable: choose another with -o")

    def refuse_scene(self, scene: str | os.PathLike) -> None:
        """Refuse outputs that are the scene file itself, whatever ``--overwrite`` says.

        The same file by path, symbolic link or hard link (a GeoPackage raster
        as the scene, ``-o`` naming the input): replacing it would destroy
        the input.  Raises :class:`OutputError`.
        """
        for path in self.paths:
            if _same_file(path, scene):
                raise OutputError(f"output {str(path)!r} is the scene {str(scene)!r} itself, and writing it would "
                                  "destroy the input: choose another output with --out")

    def check_source(self, scene: str | os.PathLike, scene_sha256: str, *,
                     record: RunRecord | None | object = _UNREAD) -> None:
        """Refuse an existing GeoPackage that was made from another scene (``batch`` without ``--force``).

        A scene is the one recorded when it is the same file (its path, or a
        link to it) or has the same checksum (a moved copy).  A scene of the
        same name from another folder or a later night is not: its output
        would silently replace that one.  Raises :class:`OutputExistsError`.
        ``record`` is the GeoPackage's, where the caller has read it already.
        """
        record = read_run_record(self.gpkg) if record is _UNREAD else record
        if record is None or record.scene_sha256 == scene_sha256 or _same_file(record.scene_path, scene):
            return
        shown = str(scene) if "://" in str(scene) or str(scene).startswith("/vsi") else str(Path(scene).resolve())
        raise OutputExistsError(f"output {str(self.gpkg)!r} was made from scene {record.scene_path!r}, not "
                                f"{shown!r}: use another --out-dir, or --force to replace it")

    def up_to_date(self, signature: str, *, record: RunRecord | None | object = _UNREAD) -> bool:
        """Whether the GeoPackage records ``signature`` and every other output exists.

        Raises :class:`OutputExistsError` when the GeoPackage exists but is no
        scenetag GeoPackage.  ``record`` is the GeoPackage's, where the caller
        has read it already.
        """
        record = read_run_record(self.gpkg) if record is _UNREAD else record
        if record is None or record.signature != signature:
            return False
        missing = [p for p in self.paths[1:] if not p.is_file()]
        if missing:
            log.info("%s is current but %s is missing: writing again", self.gpkg, missing[0])
        return not missing

    def write(self, table: "ChipTable", spec: "ModelSpec", frame: SceneFrame, run: RunRecord, *,
              overwrite: bool = False) -> RunRecord:
        """Write every output of the scene at once, each atomically; the record written (:meth:`open`, then
        :meth:`SceneWrite.finish`)."""
        return self.open(spec, frame, overwrite=overwrite).finish(table, run)

    def open(self, spec: "ModelSpec", frame: SceneFrame, *, overwrite: bool = False,
             tmp: str | os.PathLike | None = None) -> "SceneWrite":
        """Start writing the scene's outputs: give the write its chips as they are classified, then finish it.

        Call :meth:`check` first.  Without ``overwrite`` an output that appeared
        meanwhile is refused (atomically, by the renames at the end);
        ``overwrite`` also replaces an existing QGIS style beside the raster,
        which is otherwise kept (it may be the user's).  ``tmp`` names the
        GeoPackage's temporary, where the scene's parts are written by several
        processes (:meth:`SceneWrite.append_part`); by default it is this process's own.
        """
        return SceneWrite(self, spec, frame, overwrite, tmp)


class SceneWrite:
    """One scene's outputs being written: the chips layer streams as batches come (:meth:`add`), the rest at
    :meth:`finish`.

    The GeoPackage goes through :class:`~scenetag.outputs_schema.stream.ChipStream`
    (a temporary file, renamed at the end); the probability raster, which
    needs every chip, is written at :meth:`finish`.  On an error, or
    :meth:`abort`, nothing is left and nothing is replaced.
    """

    def __init__(self, outputs: SceneOutputs, spec: "ModelSpec", frame: SceneFrame, overwrite: bool,
                 tmp: str | os.PathLike | None = None) -> None:
        from rasterio.crs import CRS

        from scenetag.outputs_schema.stream import ChipStream

        self.outputs, self.spec, self.frame, self.overwrite = outputs, spec, frame, overwrite
        self._to_crs = CRS.from_user_input(outputs.to_crs) if outputs.to_crs else None
        self._tmp = tmp
        self.chips = ChipStream(self._geopackage, n_cols=frame.grid_shape[1])

    def _geopackage(self):
        from scenetag.outputs_schema.geopackage import GeoPackageWriter

        frame = self.frame
        return GeoPackageWriter(self.outputs.gpkg, spec=self.spec, scene_id=frame.scene_id,
                                transform=frame.transform, crs=frame.crs, stride=frame.stride,
                                to_crs=self._to_crs, replace=self.overwrite, tmp=self._tmp)

    def append_part(self, parts: "WrittenParts", tables: Sequence["ChipTable"]) -> "WrittenParts":
        """Append the next strips' chips to the temporary GeoPackage ``parts.tmp`` (a part task, in any process).

        See :func:`~scenetag.outputs_schema.stream.append_part`: a task run again writes nothing twice.
        """
        from scenetag.outputs_schema.stream import append_part

        return append_part(self._geopackage(), parts, tables, self.spec.n_labels)

    def continuing(self, parts: "WrittenParts", tables: Sequence["ChipTable"]) -> None:
        """Finish, with :meth:`finish`, the GeoPackage that part tasks began (``tables``: every strip, in order)."""
        self.chips.continuing(parts, tables)

    def add(self, table: "ChipTable") -> None:
        """One batch of classified chips (returns at once: a thread writes them)."""
        self.chips.add(table)

    __call__ = add  # the classification's ``on_table`` callback

    @property
    def seconds_streaming(self) -> float:
        """Seconds the chips layer was written beside the classification (its writer thread's)."""
        return self.chips.seconds_streaming

    def finish(self, table: "ChipTable", run: RunRecord) -> RunRecord:
        """Write the rest from ``table`` (every chip of the scene, in grid order); the record written."""
        # An output that appeared since check() is not replaced: the writers' renames refuse it
        # atomically; this first look only avoids writing the GeoPackage when the raster is taken.
        if not self.overwrite:
            for path in self.outputs.paths:
                if path.exists():
                    self.abort()
                    raise OutputExistsError(f"output {str(path)!r} exists: it appeared while this run worked, "
                                            "and is kept; pass --overwrite to replace it")
        run = self.chips.finish(table, run)
        if self.outputs.raster:
            from scenetag.outputs_schema.raster import grid_transform, scene_layout, write_probability_raster

            frame = self.frame
            layout = None if frame.scene_shape is None else scene_layout(
                frame.transform, frame.scene_shape, frame.grid_shape, frame.stride, frame.chip)
            write_probability_raster(
                self.outputs.raster_path, table, self.spec.labels, *frame.grid_shape,
                grid_transform(frame.transform, frame.stride, frame.chip), frame.crs,
                tags={"scenetag_run_id": run.run_id, "scenetag_signature": run.signature},
                replace=self.overwrite, layout=layout,
            )
        return run

    def abort(self) -> None:
        """Stop writing: the temporary files go, no output is written."""
        self.chips.abort()
