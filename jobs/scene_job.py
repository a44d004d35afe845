"""The steps of a scene job: scene + model + options → outputs.

Every way of running scenetag runs these steps, as tasks on an executor
(:mod:`jobs.runner`):

:func:`prepare_scene`
    Refuse outputs that may not be written, skip a scene whose outputs are
    up to date (batch), and :func:`plan_scene`: open and validate the scene,
    choose bands, lay the grid, compute the per-scene stretch.
:func:`hash_scene`
    The scene's checksum, for provenance (beside the classification when
    the skip check did not need it first).
:func:`classify_strip`
    Read and classify a strip of the grid's cells (:mod:`jobs.classify`).
:func:`write_scene`
    Join the strips, build the provenance row and write the outputs atomically.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence


import scenetag
from scenetag.errors import ChipLimitError, OptionError, SceneReadError
from scenetag.hashing import file_sha256
from scenetag.jobs.classify import Progress, classify_cells
from scenetag.jobs.models import SceneModel
from scenetag.jobs.options import RunOptions
from scenetag.jobs.report import Status
from scenetag.model.spec import ModelSpec
from scenetag.outputs_schema.records import ChipTable
from scenetag.outputs_schema.outputs import SceneFrame, SceneOutputs
from scenetag.outputs_schema.run_record import RunRecord, read_run_record
from scenetag.outputs_schema.schema import SCHEMA_VERSION
from scenetag.tiler.grid import Grid, GridCell, chip_grid
from scenetag.tiler.reader import ChipReader
from scenetag.tiler.scaling import Stretch, scene_stretch
from scenetag.tiler.scene import SceneInfo, open_scene, resolution_factor, select_bands

if TYPE_CHECKING:
    import geopandas

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScenePlan:
    """Everything decided about a scene before any chip is read."""

    info: SceneInfo
    spec: ModelSpec
    options: RunOptions
    bands: tuple[int, ...]
    factor: float
    grid: Grid
    stretch: Stretch | None

    @property
    def warnings(self) -> tuple[str, ...]:
        """What planning found doubtful about the scene (recorded in ``runs.warnings``)."""
        return self.stretch.warnings if self.stretch is not None else ()

    def reader(self) -> ChipReader:
        """A reader for this plan's cells."""
        return ChipReader(self.info, self.bands, self.spec.chip_size, self.factor,
                          self.stretch, self.options.min_valid)


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
    timings: dict = field(default_factory=dict)

    @property
    def chips_per_second(self) -> float:
        return self.n_chips_classified / self.seconds if self.seconds else 0.0

    def chips(self) -> "geopandas.GeoDataFrame":
        """The ``chips`` layer written for this scene, as a GeoDataFrame."""
        from scenetag.api import read_chips

        return read_chips(self.output)


@contextlib.contextmanager
def scene_reads(scene: str | Path, step: str) -> Iterator[None]:
    """Turn any GDAL error raised while ``step`` reads ``scene`` into a one-line :class:`SceneReadError`.

    A truncated or corrupt file opens, and fails only when a block is read,
    anywhere: the stretch sample, the mask, a chip.  Whichever step meets it,
    the scene is unreadable, which is a per-scene failure (:mod:`jobs.failures`).
    """
    from rasterio.errors import RasterioError

    try:
        yield
    except RasterioError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        cause = exc.__cause__ or exc.__context__
        # rasterio's own text says only "see previous exception": GDAL's cause names the block
        detail = str(cause).splitlines()[0] if cause is not None and str(cause) else first
        raise SceneReadError(f"scene {str(scene)!r} could not be read ({step}): {detail} "
                             "(is the file truncated or corrupt?)") from exc


def plan_scene(scene_path: str | Path, spec: ModelSpec, options: RunOptions) -> ScenePlan:
    """Validate the scene against the model and options and lay the grid.

    Raises :class:`SceneReadError` for any GDAL error on the way (:func:`scene_reads`).
    """
    with scene_reads(scene_path, "planning"):
        return _plan_scene(scene_path, spec, options)


def _plan_scene(scene_path: str | Path, spec: ModelSpec, options: RunOptions) -> ScenePlan:
    info = open_scene(scene_path)
    bands = select_bands(info, spec, options.bands)
    factor = resolution_factor(info, spec, options.resample)
    src_chip = max(1, round(spec.chip_size * factor))
    stride = options.stride if options.stride is not None else spec.chip_size
    if stride > spec.chip_size:
        raise OptionError(
            f"stride {stride} is larger than the chip size {spec.chip_size}: use a stride "
            "of at most the chip size (or --overlap)"
        )
    src_stride = max(1, round(stride * factor))
    grid = chip_grid(info.width, info.height, src_chip, src_stride, options.edge)
    check_chip_count(info, grid, stride, options.max_chips)
    stretch = scene_stretch(info, bands, spec)
    return ScenePlan(info, spec, options, bands, factor, grid, stretch)


def check_chip_count(info: SceneInfo, grid: Grid, stride: int, max_chips: int) -> None:
    """Log how many chips the scene will classify; refuse it when that is more than ``max_chips``.

    Decided from the grid's shape alone, before a pixel is read or anything written.
    """
    n = len(grid)
    rows, cols = grid.shape
    log.info("%s: %s chips to classify (%d x %d, stride %d, chip %d px)%s", info.scene_id, f"{n:,}", rows, cols,
             stride, grid.chip, f", {grid.n_skipped:,} skipped at the edge" if grid.n_skipped else "")
    if n > max_chips:
        raise ChipLimitError(
            f"stride {stride} on a {info.width}x{info.height} scene would classify {n:,} chips, more than "
            f"the limit of {max_chips:,}: pass --max-chips {n} to allow more (or use a larger stride)")


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
    if len(plan.grid) == 0:
        return Status.EMPTY, (f"no chip fits: the scene is {plan.info.width}x{plan.info.height} pixels, "
                         f"smaller than one chip, and the edge policy is skip")
    info, chip = plan.info, plan.grid.chip
    reason = (f"no chip had at least {plan.options.min_valid:.0%} valid pixels in its part inside the scene "
              f"({table.n_skipped_nodata} of {len(plan.grid)} skipped for nodata)")
    if info.width < chip and info.height < chip:
        reason = (f"the scene is {info.width}x{info.height} pixels, smaller than one {chip}-pixel chip, and "
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
    scene_sha256: str | None = None
    plan: ScenePlan | None = None

    @property
    def skipped(self) -> bool:
        return self.plan is None


def prepare_scene(scene: str, out: str, model: SceneModel, options: RunOptions, skip_current: bool,
                  overwrite: bool) -> Prepared:
    """Check the outputs, skip the scene if they are up to date (with ``skip_current``), else plan it.

    ``overwrite`` lets the write replace existing outputs (``run --overwrite``,
    and ``batch`` for outputs that are out of date).  An output that is the
    scene itself is always refused; with ``skip_current``, so is an output
    made from another scene (:meth:`SceneOutputs.check_source`).
    """
    wall_start, started_at = time.time(), _now()
    outputs = SceneOutputs(out, options.raster, options.to_crs)
    outputs.refuse_scene(scene)  # before anything, even with --overwrite or --force
    scene_sha = None
    if skip_current:
        if not Path(scene).is_file():
            raise SceneReadError(f"scene {scene!r} does not exist" if not Path(scene).exists()
                                 else f"scene {scene!r} is not a file")
        # Without an output there is nothing to compare: the checksum is then computed beside the
        # classification (the runner's hash task), not before it.
        record = read_run_record(outputs.gpkg)
        if record is not None:
            scene_sha = hash_scene(scene)
            if outputs.up_to_date(signature(scene_sha, model.sha256, model.spec, options), record=record):
                return Prepared(scene, out, overwrite, started_at, wall_start, scene_sha)
            # The batch replaces its own out-of-date outputs, never another scene's (--force skips this).
            outputs.check_source(scene, scene_sha, record=record)
    outputs.check(overwrite)
    plan = plan_scene(scene, model.spec, options)
    return Prepared(scene, out, overwrite, started_at, wall_start, scene_sha, plan)


def hash_scene(scene: str) -> str:
    """sha256 of the scene file."""
    try:
        return file_sha256(scene)
    except OSError as exc:
        raise SceneReadError(f"scene {scene!r} cannot be read ({exc})") from exc


def classify_strip(plan: ScenePlan, cells: Sequence[GridCell] | None, model: SceneModel,
                   progress: Progress | None = None) -> ChipTable:
    """Classify ``cells`` of a planned scene (None: the whole grid) with the model's predictor here."""
    predictor = model.predictor()
    try:
        with scene_reads(plan.info.path, "reading its chips"):
            return classify_cells(plan, predictor, cells=cells, progress=progress)
    finally:
        flush = getattr(progress, "flush", None)  # a throttled relay (jobs.progress.ChipEvents): its last count
        if flush is not None:
            flush()


def write_scene(prep: Prepared, model: SceneModel, scene_sha256: str, *tables: ChipTable) -> SceneResult:
    """The scene's single writer: join its strips, write the outputs atomically; returns the result."""
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
        scene_path=info.path,
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
        config=dict(opts.config or {}),
    )
    frame = SceneFrame(info.scene_id, info.transform, info.crs, plan.grid.shape, plan.grid.stride, plan.grid.chip)
    SceneOutputs(prep.out, opts.raster, opts.to_crs).write(table, spec, frame, run, overwrite=prep.overwrite)
    return SceneResult(
        scene=info.path, output=str(prep.out), status=status, reason=reason, warnings=plan.warnings,
        n_chips_total=run.n_chips_total, n_chips_classified=len(table),
        n_chips_skipped_nodata=table.n_skipped_nodata, n_chips_skipped_edge=plan.grid.n_skipped,
        seconds=time.time() - prep.wall_start,
        timings={"read": table.seconds_read, "infer": table.seconds_infer,
                 "write": time.perf_counter() - t_write, **table.extra.get("timings", {})},
    )
