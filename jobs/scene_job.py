"""The steps of a scene job: scene + model + options → outputs.

Every way of running scenetag runs these steps, as tasks on an executor
(:mod:`jobs.runner`):

:func:`prepare_scene`
    Refuse outputs that may not be written, skip a scene whose outputs are
    up to date (batch), and :func:`~jobs.planning.plan_scene`: open and validate the scene,
    choose bands, lay the grid, compute the per-scene stretch.
:func:`hash_scene`
    The scene's checksum, for provenance (beside the classification when
    the skip check did not need it first).
:func:`classify_strip`
    Read and classify a strip of the grid's cells (:mod:`jobs.classify`).
:func:`write_scene`
    Join the strips, build the provenance row and write the outputs atomically.
:func:`write_part`, :func:`finish_parts`
    On a cluster, where the strips are classified in other processes: the
    chips layer appended a part at a time as its strips are done, and the
    write that finishes it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Sequence


import scenetag
from scenetag.atomic import temporary_name
from scenetag.errors import SceneReadError
from scenetag.hashing import SceneIdentity
from scenetag.jobs.classify import Progress, classify_cells
from scenetag.jobs.models import SceneModel
from scenetag.jobs.options import RunOptions
from scenetag.jobs.planning import ScenePlan, plan_scene, scene_reads
from scenetag.jobs.report import Status
from scenetag.jobs.sources import SceneSource, resolve_source, source_identity
from scenetag.model.spec import ModelSpec
from scenetag.outputs_schema.records import ChipTable
from scenetag.outputs_schema.outputs import SceneFrame, SceneOutputs, SceneWrite
from scenetag.outputs_schema.run_record import RunRecord, read_run_record
from scenetag.outputs_schema.schema import SCHEMA_VERSION
from scenetag.outputs_schema.stream import WrittenParts
from scenetag.tiler.grid import GridCell
from scenetag.tiler.location import redact

if TYPE_CHECKING:
    import geopandas

log = logging.getLogger(__name__)


@dataclass
class SceneResult:
    """What happened to one scene."""

    scene: str
    output: str | None
    status: Status
    n_chips_total: int = 0
    n_chips_classified: int = 0
    n_chips_skipped_nodata: int = 0
    n_chips_skipped_edge: int = 0
    seconds: float = 0.0
    reason: str = ""
    #: What the run found doubtful (as recorded in ``runs.warnings``).
    warnings: tuple[str, ...] = ()
    #: The bands used and their evidence (as recorded in ``runs.bands_used``).
    bands_used: str = ""
    timings: dict = field(default_factory=dict)

    @property
    def chips_per_second(self) -> float:
        return self.n_chips_classified / self.seconds if self.seconds else 0.0

    def chips(self) -> "geopandas.GeoDataFrame":
        """The ``chips`` layer written for this scene, as a GeoDataFrame."""
        from scenetag.api import read_chips

        return read_chips(self.output)


def signature(scene_sha256: str, model_sha256: str, spec: ModelSpec, options: RunOptions) -> str:
    """Hash of what determines the output: scene, model, spec, options, schema version."""
    payload = json.dumps({
        "scene": scene_sha256, "model": model_sha256, "spec": spec.to_dict(),
        "options": options.result_affecting(), "schema": SCHEMA_VERSION,
    }, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def scene_status(plan: ScenePlan, table: ChipTable) -> tuple[Status, str]:
    """The scene's status (``ok`` or ``empty``) and, when empty, why."""
    if len(table):
        return Status.OK, ""
    info = plan.info
    if len(plan.grid) == 0:
        return Status.EMPTY, (f"no chip fits: the scene is {info.width}x{info.height} pixels, "
                              f"smaller than {plan.chip_text}, and the edge policy is skip")
    reason = (f"no chip had at least {plan.options.min_valid:.0%} valid pixels in its part inside the scene "
              f"({table.n_skipped_nodata} of {len(plan.grid)} skipped for nodata)")
    if plan.smaller_than_chip:
        reason = (f"the scene is {info.width}x{info.height} pixels, smaller than {plan.chip_text}, and "
                  f"fewer than {plan.options.min_valid:.0%} of its pixels are valid (nodata or mask)")
    return Status.EMPTY, reason


@dataclass(frozen=True)
class Prepared:
    """A scene after its first step: skipped (its outputs are up to date), or planned."""

    scene: str
    out: str
    #: Whether the write may replace existing outputs.
    overwrite: bool
    started_at: str
    #: ``time.time()`` at the start: the scene's steps may run in different processes.
    wall_start: float
    #: Known when the skip check needed it; else :func:`hash_scene` computes it beside the classification.
    identity: SceneIdentity | None = None
    plan: ScenePlan | None = None
    #: What the scene is read from (a STAC item's asset), its name and what else is known of it.
    source: SceneSource | None = None

    @property
    def skipped(self) -> bool:
        return self.plan is None

    @property
    def scene_sha256(self) -> str | None:
        """The digest of the scene's identity, where known (the sha256 of a local file)."""
        return self.identity.digest if self.identity is not None else None


@dataclass(frozen=True)
class OutputState:
    """What an existing output says about a scene: its run record and whether it is up to date."""

    #: The GeoPackage's run record; None when there is no output.
    record: RunRecord | None = None
    #: The scene's identity, computed to compare signatures (None without an output).
    identity: SceneIdentity | None = None
    #: Whether the outputs were made from this scene, model and options (same signature), all present.
    current: bool = False


def output_state(scene: str | SceneSource, outputs: SceneOutputs, model: SceneModel,
                 options: RunOptions) -> OutputState:
    """Read the output's record and compare signatures: the one decision of whether an output is up to date.

    Without an output there is nothing to compare, and the scene is not hashed
    (the identity is then computed beside the classification, the runner's
    hash task).  Remote: one small request, no pixels.  Raises
    :class:`OutputExistsError` for a file that is no scenetag GeoPackage.
    """
    record = read_run_record(outputs.gpkg)
    if record is None:
        return OutputState()
    source = scene if isinstance(scene, SceneSource) else resolve_source(scene, model.spec, options.asset,
                                                                         options.bands)
    identity = hash_scene(source)
    current = outputs.up_to_date(signature(identity.digest, model.sha256, model.spec, options), record=record)
    return OutputState(record, identity, current)


def prepare_scene(scene: str, out: str, model: SceneModel, options: RunOptions, skip_current: bool,
                  overwrite: bool, state: OutputState | None = None) -> Prepared:
    """Check the outputs, skip the scene if they are up to date (with ``skip_current``), else plan it.

    ``overwrite`` lets the write replace existing outputs (``run --overwrite``,
    and ``batch`` for outputs that are out of date).  An output that is the
    scene itself is always refused; with ``skip_current``, so is an output
    made from another scene (:meth:`SceneOutputs.check_source`).  ``state`` is
    the :func:`output_state`, where the caller has it already (a dry run).
    """
    wall_start, started_at = time.time(), _now()
    outputs = SceneOutputs(out, options.raster, options.to_crs)
    # A STAC item becomes its asset; any other location is itself (nothing is read of a raster yet).
    source = resolve_source(scene, model.spec, options.asset, options.bands)
    outputs.refuse_scene(source.location)  # before anything, even with --overwrite or --force
    identity = None
    if skip_current:
        if not source.remote and not Path(source.location).is_file():
            raise SceneReadError(f"scene {source.location!r} does not exist" if not Path(source.location).exists()
                                 else f"scene {source.location!r} is not a file")
        state = state if state is not None else output_state(source, outputs, model, options)
        identity = state.identity
        if state.current:
            return Prepared(scene, out, overwrite, started_at, wall_start, identity, source=source)
        if state.record is not None:
            # The batch replaces its own out-of-date outputs, never another scene's (--force skips this).
            outputs.check_source(source.shown if source.remote else source.location, identity.digest,
                                 record=state.record)
    outputs.check(overwrite)
    plan = plan_scene(source, model.spec, options)
    return Prepared(scene, out, overwrite, started_at, wall_start, identity, plan, source)


def hash_scene(scene: str | SceneSource) -> SceneIdentity:
    """The scene's identity (:func:`~jobs.sources.source_identity`): a local file's sha256, a remote one's ETag..."""
    return source_identity(scene)


def classify_strip(plan: ScenePlan, cells: Sequence[GridCell] | None, model: SceneModel,
                   progress: Progress | None = None, stream: SceneWrite | None = None) -> ChipTable:
    """Classify ``cells`` of a planned scene (None: the whole grid) with the model's predictor here.

    ``stream`` (:func:`open_write`, in this process) takes each batch as it is classified.
    """
    predictor = model.predictor()
    try:
        with scene_reads(plan.info.path, "reading its chips"):
            return classify_cells(plan, predictor, cells=cells, progress=progress, on_table=stream)
    finally:
        flush = getattr(progress, "flush", None)  # a throttled relay (jobs.progress.ChipEvents): its last count
        if flush is not None:
            flush()


def scene_frame(plan: ScenePlan) -> SceneFrame:
    """Where the planned scene's chips lie, as the writers need it."""
    info, grid = plan.info, plan.grid
    return SceneFrame(info.scene_id, info.transform, info.crs, grid.shape, grid.stride, grid.chip,
                      (info.height, info.width))


def open_write(prep: Prepared, tmp: str | None = None) -> SceneWrite:
    """Start the planned scene's write, to stream its chips as they are classified (:func:`classify_strip`).

    Nothing is on disk until the first chips are written, and only under a
    temporary name (``tmp``, else one of this process); :func:`write_scene`
    finishes it, or :meth:`SceneWrite.abort` drops it.
    """
    opts = prep.plan.options
    return SceneOutputs(prep.out, opts.raster, opts.to_crs).open(prep.plan.spec, scene_frame(prep.plan),
                                                                 overwrite=prep.overwrite, tmp=tmp)


def open_parts(prep: Prepared) -> WrittenParts:
    """The start of a chips layer written in parts by tasks in other processes: its temporary's name.

    The name is this process's (the job's): the job removes it if the scene
    fails, and while the job lives no sweep takes it for a dead writer's.
    """
    return WrittenParts(str(temporary_name(SceneOutputs(prep.out).gpkg)))


def write_part(prep: Prepared, parts: WrittenParts, *tables: ChipTable) -> WrittenParts:
    """Append the next strips' chips (``tables``, in grid order) to the scene's chips layer; what is written now."""
    return open_write(prep, parts.tmp).append_part(parts, tables)


def finish_parts(prep: Prepared, model: SceneModel, identity: SceneIdentity | str, parts: WrittenParts,
                 *tables: ChipTable) -> SceneResult:
    """The write of a scene whose chips layer :func:`write_part` began: the rest, then as :func:`write_scene`."""
    write = open_write(prep, parts.tmp)
    write.continuing(parts, tables)
    return write_scene(prep, model, identity, *tables, stream=write)


def write_scene(prep: Prepared, model: SceneModel, identity: SceneIdentity | str, *tables: ChipTable,
                stream: SceneWrite | None = None) -> SceneResult:
    """The scene's single writer: join its strips, write the outputs atomically; returns the result.

    ``identity`` is the scene's (:func:`hash_scene`); a bare digest is taken as a local file's sha256.
    ``stream`` is the write that took the chips as they were classified (:func:`open_write`);
    without it every output is written here.
    """
    if isinstance(identity, str):
        identity = SceneIdentity("sha256", identity)
    scene_sha256 = identity.digest
    source = prep.source
    scene_source = {"identity": identity.to_dict()}
    if source is not None and source.stac is not None:
        scene_source["stac"] = source.stac
    plan = prep.plan
    info, spec, opts = plan.info, plan.spec, plan.options
    table = ChipTable.concat(tables, spec.n_labels) if len(tables) != 1 else tables[0]
    status, reason = scene_status(plan, table)
    t_write = time.perf_counter()
    run = RunRecord(
        run_id=uuid.uuid4().hex,
        schema_version=SCHEMA_VERSION,
        software=f"scenetag {scenetag.__version__}",
        started_at=prep.started_at,
        finished_at=_now(),
        status=status.value,
        reason=reason,
        scene_path=redact(info.path),
        scene_sha256=scene_sha256,
        scene_crs=info.crs.to_string(),
        model_name=spec.name,
        model_sha256=model.sha256,
        model_spec=spec.to_dict(),
        thresholds=dict(zip(spec.labels, spec.thresholds)),
        options={**opts.to_dict(), "bands_used": list(plan.bands), "resolution_factor": plan.factor,
                 "stretch": None if plan.stretch is None else
                 {"low": plan.stretch.low, "high": plan.stretch.high}},
        signature=signature(scene_sha256, model.sha256, spec, opts),
        n_chips_total=len(plan.grid) + plan.grid.n_skipped,
        n_chips_classified=len(table),
        n_chips_skipped_nodata=table.n_skipped_nodata,
        n_chips_skipped_edge=plan.grid.n_skipped,
        # Times that include the write itself are estimated just before it (the writer adds its own).
        seconds_total=time.time() - prep.wall_start,
        seconds_read=table.seconds_read,
        seconds_infer=table.seconds_infer,
        seconds_write=0.0,
        warnings=list(plan.warnings),
        bands_used=plan.bands_used,
        scene_source=scene_source,
        config=dict(opts.config or {}),
    )
    write = stream or open_write(prep)
    write.finish(table, run)
    return SceneResult(
        scene=redact(info.path), output=str(prep.out), status=status, reason=reason, warnings=plan.warnings,
        bands_used=plan.bands_used,
        n_chips_total=run.n_chips_total, n_chips_classified=len(table),
        n_chips_skipped_nodata=table.n_skipped_nodata, n_chips_skipped_edge=plan.grid.n_skipped,
        seconds=time.time() - prep.wall_start,
        # "write": what the scene waited for; "write_streamed": what its writer thread (on a cluster, its part
        # tasks) wrote beside the classification.
        timings={"read": table.seconds_read, "infer": table.seconds_infer,
                 "write": time.perf_counter() - t_write, "write_streamed": write.seconds_streaming,
                 **table.extra.get("timings", {})},
    )
