"""Reading and classifying a scene's cells: reader threads, or reader processes for a GPU.

:func:`classify_cells` reads cells on a bounded thread pool (so memory stays
flat) while the model runs on full batches, or hands them to reader
processes with double-buffered inference (:mod:`jobs.pipeline`), as
:func:`reader_mode` decides.  Either way it returns a :class:`ChipTable`.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

import numpy as np

from scenetag.tiler.cloud import gdal_env
from scenetag.jobs.options import DEFAULT_THREADS, RunOptions
from scenetag.model.backends import Pending, Predictor
from scenetag.model.backends.base import queues_work
from scenetag.outputs_schema.records import ChipTable
from scenetag.tiler.feed import ReaderMode
from scenetag.tiler.grid import GridCell
from scenetag.tiler.reader import ChipReader, RunRead

if TYPE_CHECKING:
    from scenetag.jobs.planning import ScenePlan

log = logging.getLogger(__name__)

Progress = Callable[[int], None]

#: Below this many cells, starting reader processes costs more than it saves.
PROCESS_MIN_CELLS = 256


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


#: What a worker that may not start reader processes costs, as the warnings say it.
THREADS_COST = ("reader threads feed a GPU at a fraction of its rate (4-8k chips/s against 11.9k with reader "
                "processes on the H200 host, docs/performance.md)")
#: How to start Dask workers that may start reader processes (docs/batch.md).
NON_DAEMONIC_HINT = "start the workers with DASK_DISTRIBUTED__WORKER__DAEMON=False (docs/batch.md)"

_warned_daemonic = False


def can_start_readers() -> bool:
    """Whether this process may start reader processes: not in a daemonic one (a Dask worker, by default).

    multiprocessing refuses children to a daemonic process (an assertion in
    ``Process.start``, whatever the start method; the readers would be the
    fork server's children and would die with this process anyway).  Dask
    workers are daemonic unless ``distributed.worker.daemon`` is False.
    """
    return not multiprocessing.current_process().daemon


def reader_mode(options: RunOptions, predictor: Predictor, n_cells: int) -> str:
    """The reader for this job, "threads" or "processes" (``auto``: processes to feed a GPU on a large grid).

    A process that may not start reader processes (:func:`can_start_readers`)
    reads with threads, and says so once (``batch`` says so on the client, for
    all its workers, when it starts: :func:`scenetag.jobs.cluster.warn_thread_readers`).
    """
    global _warned_daemonic
    if options.reader != "auto":
        wanted = ReaderMode(options.reader).value
    else:
        wanted = "processes" if predictor.on_gpu and n_cells >= PROCESS_MIN_CELLS else "threads"
    if wanted == "processes" and not can_start_readers():
        if not _warned_daemonic:
            _warned_daemonic = True
            log.warning("this process (a daemonic Dask worker) may not start reader processes: it reads with "
                        "threads, and %s; %s", THREADS_COST, NON_DAEMONIC_HINT)
        return "threads"
    return wanted


def classify_cells(
    plan: "ScenePlan",
    predictor: Predictor,
    cells: Sequence[GridCell] | None = None,
    progress: Progress | None = None,
    on_table: Callable[[ChipTable], None] | None = None,
) -> ChipTable:
    """Read and classify ``cells`` (default: the whole grid) of a planned scene.

    ``on_table`` is called with each batch's table as it is collected (the streamed write).

    On reader threads (one chip per read, the model on this thread), or on
    reader processes with double-buffered inference (:mod:`jobs.pipeline`),
    as :func:`reader_mode` decides.
    """
    # The grid and its strips are lazy sequences: never list them (a cell is
    # made as it is read, so memory stays flat whatever the chip count).
    cells = plan.grid if cells is None else cells
    opts = plan.options
    bs = opts.batch_size or predictor.batch_size
    # Processes pay for themselves by the scene's size (a strip of it reads with the same readers).
    if reader_mode(opts, predictor, len(plan.grid)) == "processes":
        from scenetag.jobs.pipeline import classify_with_feed

        return classify_with_feed(plan.reader(), predictor, cells, plan.spec.n_labels,
                                  batch_size=bs, workers=opts.readers, progress=progress, on_table=on_table)
    n_threads = opts.readers or DEFAULT_THREADS
    read_seconds = [0.0]
    lock = threading.Lock()
    # Results are kept as one small table per batch, never as Python objects per chip.
    tables: list[ChipTable] = []
    batch: list[np.ndarray] = []
    batch_meta: list[tuple] = []
    skipped = 0
    infer_seconds = 0.0
    # A predictor that queues its own work (OpenVINO's infer requests) classifies a batch
    # while this thread gathers the next: one batch in flight, collected at the next flush.
    in_flight: deque[tuple[list[tuple], Pending]] = deque()
    asynchronous = queues_work(predictor)

    def done(meta: list[tuple], probs: np.ndarray) -> None:
        """A batch classified: its table kept, handed on, counted."""
        tables.append(ChipTable.from_rows(meta, probs))
        if on_table:
            on_table(tables[-1])
        if progress:
            progress(len(meta))

    def collect(keep: int) -> None:
        nonlocal infer_seconds
        while len(in_flight) > keep:
            meta, pending = in_flight.popleft()
            t0 = time.perf_counter()
            p = pending.result()
            infer_seconds += time.perf_counter() - t0
            done(meta, p)

    def timed_read(reader: ChipReader, cell: GridCell) -> RunRead:
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
        if asynchronous:
            # One copy: submit gathers the chips into its own batch.
            in_flight.append((list(batch_meta), predictor.submit([c[None] for c in batch])))
            infer_seconds += time.perf_counter() - t0
            collect(keep=1)
        else:
            p = predictor.predict(np.stack(batch))
            infer_seconds += time.perf_counter() - t0
            done(batch_meta, p)
        batch.clear()
        batch_meta.clear()

    with gdal_env(), plan.reader() as reader, \
            ThreadPoolExecutor(n_threads, thread_name_prefix="chip-reader") as pool:
        for read in _bounded_map(pool, lambda c: timed_read(reader, c), cells, max_in_flight=2 * bs + n_threads):
            if read.n_skipped:
                skipped += 1
                if progress:
                    progress(1)
                continue
            c = read.cells[0]
            batch.append(read.pixels[0])
            batch_meta.append((c.row, c.col, c.col_off, c.row_off, c.width, c.height, float(read.valid[0])))
            if len(batch) >= bs:
                flush()
        flush()
        collect(keep=0)
    table = ChipTable.concat(tables, plan.spec.n_labels)
    table.n_skipped_nodata = skipped
    table.seconds_read = read_seconds[0]
    table.seconds_infer = infer_seconds
    return table
