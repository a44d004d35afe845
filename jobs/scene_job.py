"""The scene job: scene + model + options → GeoPackage.

It is three steps that other jobs reuse:

:func:`plan_scene`
    Open and validate the scene, choose bands, lay the grid, compute the
    per-scene stretch.  Cheap, picklable, done once.
:func:`classify_cells`
    Read cells on a thread pool (bounded, so memory stays flat) while the
    model runs on full batches; returns a :class:`ChipTable`.  A batch job
    runs this on strips of the grid.
:func:`write_scene`
    Build the provenance row and write the GeoPackage atomically.

:func:`run_scene` is the three in a row, the path ``cli.py run`` takes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import threading
import time
import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import rasterio

import scenetag
from scenetag.jobs.options import DEFAULT_THREADS, RunOptions
from scenetag.hashing import file_sha256
from scenetag.model.predictor import Predictor, on_gpu
from scenetag.model.spec import ModelSpec
from scenetag.outputs_schema.outputs import SceneFrame, SceneOutputs
from scenetag.outputs_schema.records import ChipTable
from scenetag.outputs_schema.run_record import RunRecord
from scenetag.outputs_schema.schema import SCHEMA_VERSION
from scenetag.config import gdal_cachemax_mb
from scenetag.errors import OptionError
from scenetag.tiler.grid import Grid, GridCell, chip_grid
from scenetag.tiler.reader import ChipRead, ChipReader
from scenetag.tiler.scaling import Stretch, scene_stretch
from scenetag.tiler.scene import SceneInfo, open_scene, resolution_factor, select_bands

log = logging.getLogger(__name__)

Progress = Callable[[int], None]

#: Below this many cells, starting reader processes costs more than it saves.
PROCESS_MIN_CELLS = 256


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

    def reader(self) -> ChipReader:
        """A reader for this plan's cells."""
        return ChipReader(self.info, self.bands, self.spec.chip_size, self.factor,
                          self.stretch, self.options.min_valid)


@dataclass
class SceneResult:
    """What happened to one scene."""

    scene: str
    output: str | None
    status: str
    n_chips_total: int = 0
    n_chips_classified: int = 0
    n_chips_skipped_nodata: int = 0
    n_chips_skipped_edge: int = 0
    seconds: float = 0.0
    reason: str = ""
    timings: dict = field(default_factory=dict)

    @property
    def chips_per_second(self) -> float:
        return self.n_chips_classified / self.seconds if self.seconds else 0.0


def plan_scene(scene_path: str | Path, spec: ModelSpec, options: RunOptions) -> ScenePlan:
    """Validate the scene against the model and options and lay the grid."""
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
    stretch = scene_stretch(info, bands, spec)
    return ScenePlan(info, spec, options, bands, factor, grid, stretch)


def _bounded_map(pool: ThreadPoolExecutor, fn: Callable, items: Iterable, max_in_flight: int) -> Iterator:
    """``pool.map`` that keeps at most ``max_in_flight`` results pending, in order."""
    pending: deque[Future] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= max_in_flight:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for fut in pending:
            fut.cancel()


def reader_mode(options: RunOptions, predictor: Predictor, n_cells: int) -> str:
    """The reader for this job, "threads" or "processes" (``auto``: processes to feed a GPU on a large grid).

    A daemonic process (a Dask worker) may not start children, so it reads
    with threads whatever was asked.
    """
    if multiprocessing.current_process().daemon:
        if options.reader == "processes":
            log.warning("--reader processes: this process (a Dask worker?) may not start reader processes; "
                        "reading with threads")
        return "threads"
    if options.reader != "auto":
        return options.reader
    return "processes" if on_gpu(predictor) and n_cells >= PROCESS_MIN_CELLS else "threads"


def classify_cells(
    plan: ScenePlan,
    predictor: Predictor,
    cells: Sequence[GridCell] | None = None,
    progress: Progress | None = None,
) -> ChipTable:
    """Read and classify ``cells`` (default: the whole grid) of a planned scene.

    On reader threads (one chip per read, the model on this thread), or on
    reader processes with double-buffered inference (:mod:`jobs.pipeline`),
    as :func:`reader_mode` decides.
    """
    cells = list(plan.grid) if cells is None else list(cells)
    opts = plan.options
    bs = opts.batch_size or getattr(predictor, "batch_size", 8)
    if reader_mode(opts, predictor, len(cells)) == "processes":
        from scenetag.jobs.pipeline import classify_with_feed

        return classify_with_feed(plan.reader(), predictor, cells, plan.spec.n_labels,
                                  batch_size=bs, workers=opts.readers, progress=progress)
    n_threads = opts.readers or DEFAULT_THREADS
    read_seconds = [0.0]
    lock = threading.Lock()
    rows: list[tuple] = []
    probs: list[np.ndarray] = []
    batch: list[np.ndarray] = []
    batch_meta: list[tuple] = []
    skipped = 0
    infer_seconds = 0.0

    def timed_read(reader: ChipReader, cell: GridCell) -> ChipRead:
        t0 = time.perf_counter()
        out = reader.read(cell)
        with lock:
            read_seconds[0] += time.perf_counter() - t0
        return out

    def flush() -> None:
        nonlocal infer_seconds
        if not batch:
            return
        t0 = time.perf_counter()
        p = predictor.predict(np.stack(batch))
        infer_seconds += time.perf_counter() - t0
        probs.append(p)
        rows.extend(batch_meta)
        if progress:
            progress(len(batch))
        batch.clear()
        batch_meta.clear()

    with rasterio.Env(GDAL_CACHEMAX=gdal_cachemax_mb()), plan.reader() as reader, \
            ThreadPoolExecutor(n_threads, thread_name_prefix="chip-reader") as pool:
        for read in _bounded_map(pool, lambda c: timed_read(reader, c), cells, max_in_flight=2 * bs + n_threads):
            if read.skipped:
                skipped += 1
                if progress:
                    progress(1)
                continue
            w = read.chip.window
            batch.append(read.pixels)
            batch_meta.append((read.chip.row, read.chip.col, int(w.col_off), int(w.row_off),
                               int(w.width), int(w.height), read.chip.valid_fraction))
            if len(batch) >= bs:
                flush()
        flush()
    all_probs = np.concatenate(probs) if probs else np.zeros((0, plan.spec.n_labels), np.float32)
    table = ChipTable.from_rows(rows, all_probs, skipped)
    table.seconds_read = read_seconds[0]
    table.seconds_infer = infer_seconds
    return table


def signature(scene_sha256: str, model_sha256: str, spec: ModelSpec, options: RunOptions) -> str:
    """Hash of what determines the output: scene, model, spec, options, schema version."""
    payload = json.dumps({
        "scene": scene_sha256, "model": model_sha256, "spec": spec.to_dict(),
        "options": options.result_affecting(), "schema": SCHEMA_VERSION,
    }, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _status(plan: ScenePlan, table: ChipTable) -> tuple[str, str]:
    if len(table):
        return "ok", ""
    if len(plan.grid) == 0:
        return "empty", (f"no chip fits: the scene is {plan.info.width}x{plan.info.height} pixels, "
                         f"smaller than one chip, and the edge policy is skip")
    return "empty", (f"no chip had at least {plan.options.min_valid:.0%} valid pixels "
                     f"({table.n_skipped_nodata} of {len(plan.grid)} skipped)")


def write_scene(
    plan: ScenePlan,
    table: ChipTable,
    predictor: Predictor,
    out: str | Path,
    *,
    started_at: str,
    t_start: float,
    overwrite: bool = False,
    scene_sha256: str | None = None,
) -> SceneResult:
    """Write the GeoPackage with its ``runs`` provenance row; returns the result."""
    info, spec, opts = plan.info, plan.spec, plan.options
    scene_sha = scene_sha256 or file_sha256(info.path)
    status, reason = _status(plan, table)
    t_write = time.perf_counter()
    run = RunRecord(
        run_id=uuid.uuid4().hex,
        schema_version=SCHEMA_VERSION,
        software=f"scenetag {scenetag.__version__}",
        started_at=started_at,
        finished_at=_now(),
        status=status,
        reason=reason,
        scene_path=info.path,
        scene_sha256=scene_sha,
        scene_crs=info.crs.to_string(),
        model_name=spec.name,
        model_sha256=predictor.sha256,
        model_spec=spec.to_dict(),
        thresholds=dict(zip(spec.labels, spec.thresholds)),
        options={**opts.to_dict(), "bands_used": list(plan.bands), "resolution_factor": plan.factor,
                 "stretch": None if plan.stretch is None else
                 {"low": plan.stretch.low, "high": plan.stretch.high}},
        signature=signature(scene_sha, predictor.sha256, spec, opts),
        n_chips_total=len(plan.grid) + plan.grid.n_skipped,
        n_chips_classified=len(table),
        n_chips_skipped_nodata=table.n_skipped_nodata,
        n_chips_skipped_edge=plan.grid.n_skipped,
        # Times that include the write itself are estimated just before it (the writer adds its own).
        seconds_total=time.perf_counter() - t_start,
        seconds_read=table.seconds_read,
        seconds_infer=table.seconds_infer,
        seconds_write=0.0,
    )
    frame = SceneFrame(info.scene_id, info.transform, info.crs, plan.grid.shape, plan.grid.stride, plan.grid.chip)
    # Checked before any work by SceneOutputs.check.
    run = SceneOutputs(out, opts.raster, opts.to_crs).write(table, spec, frame, run, overwrite=overwrite)
    seconds = time.perf_counter() - t_start
    return SceneResult(
        scene=info.path, output=str(out), status=status, reason=reason,
        n_chips_total=run.n_chips_total, n_chips_classified=len(table),
        n_chips_skipped_nodata=table.n_skipped_nodata, n_chips_skipped_edge=plan.grid.n_skipped,
        seconds=seconds,
        timings={"read": table.seconds_read, "infer": table.seconds_infer,
                 "write": time.perf_counter() - t_write},
    )


def run_scene(
    scene_path: str | Path,
    out: str | Path,
    predictor: Predictor,
    options: RunOptions = RunOptions(),
    *,
    overwrite: bool = False,
    progress_factory: Callable[[int], Progress] | None = None,
) -> SceneResult:
    """Classify one scene and write its GeoPackage (the path of ``cli.py run``)."""
    t_start = time.perf_counter()
    started_at = _now()
    SceneOutputs(out, options.raster, options.to_crs).check(overwrite)
    plan = plan_scene(scene_path, predictor.spec, options)
    progress = progress_factory(len(plan.grid)) if progress_factory else None
    # The scene's checksum (for provenance) is computed while chips are classified.
    with ThreadPoolExecutor(1, thread_name_prefix="scene-hash") as pool:
        scene_sha = pool.submit(file_sha256, plan.info.path)
        table = classify_cells(plan, predictor, progress=progress)
        return write_scene(plan, table, predictor, out, started_at=started_at, t_start=t_start,
                           overwrite=overwrite, scene_sha256=scene_sha.result())
