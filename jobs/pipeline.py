"""Classify cells with reader processes and double-buffered inference (the GPU path).

Reading, upload, compute and result collection overlap:

* reader processes (:class:`tiler.feed.ProcessFeed`) read runs of neighbouring
  chips into shared memory, many runs ahead;
* this thread gathers kept chips (views into those slots) into a batch and
  hands it to a :class:`scenetag.model.backends.Submitter`, which returns at once (on
  CUDA the upload and compute are queued behind each other on the GPU);
* on CUDA the slots are page-locked once for the process (they belong to
  its reader pool, kept from scene to scene), so a batch is uploaded
  straight from where the readers wrote it, with no copy on the host; a run's
  slot goes back to the readers once the upload of the last batch that uses
  it has finished.  Elsewhere the chips are copied when submitted and the
  slots go back at once;
* up to ``DEPTH`` batches are in flight; this thread collects the oldest
  result only when it has the next batch queued, so the GPU always has work.

The consumer never holds more slots than leaves every reader one to read
into: on a sparse scene (few kept chips per run) it submits a short batch
rather than wait.

The result is the same :class:`ChipTable` as the thread path gives, in grid
order, with a breakdown of where the time went in ``table.extra["timings"]``.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable, Sequence

import numpy as np

from scenetag.model.backends import AsyncPredictor, Pending, Predictor, Submitter
from scenetag.outputs_schema.records import ChipTable
from scenetag.tiler.feed import ProcessFeed, Run
from scenetag.tiler.reader_pool import ReaderPool, shared_pool, shared_pools
from scenetag.tiler.grid import GridCell, cell_array

#: Batches in flight at once: one computing, one queued behind it.
DEPTH = 2


def _submitter_key(predictor: Predictor) -> tuple:
    return ("submitter", id(predictor))


def forget_predictor(predictor: Predictor) -> None:
    """Undo what the reader pools keep for ``predictor`` (its page-locking), so it can be let go."""
    for pool in shared_pools():
        pool.detach(_submitter_key(predictor))


def pinned_submitter(pool: ReaderPool, predictor: Predictor) -> tuple[Submitter, bool]:
    """A :class:`Submitter` for ``predictor`` that uploads from ``pool``'s slots, and whether it does so directly.

    Made once per predictor and slot block and kept with the pool
    (:meth:`ReaderPool.attached`): page-locking the slots on CUDA is paid
    once per process, not per scene or strip, and undone before the block
    is freed.  The predictor is kept alive with it, so its ``id`` is not reused.
    """
    def enter(stack):
        submitter = stack.enter_context(Submitter(predictor))
        return submitter, stack.enter_context(submitter.uploading_from(pool.memory)), predictor

    submitter, direct, _ = pool.attached(_submitter_key(predictor), enter)
    return submitter, direct


def classify_with_feed(
    reader,
    predictor: Predictor,
    cells: Sequence[GridCell],
    n_labels: int,
    batch_size: int,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    on_table: Callable[[ChipTable], None] | None = None,
) -> ChipTable:
    """Read ``cells`` on reader processes and classify them, overlapping the stages.

    Args:
        reader: A :class:`tiler.reader.ChipReader` for the scene (pickled to the processes).
        predictor: The model.
        cells: Cells to classify.
        n_labels: Labels the model outputs (for an empty result).
        batch_size: Chips per model call.
        workers: Reader processes (default: :func:`tiler.reader_pool.default_workers`).
        progress: Called with the number of cells done, as they are done.
        on_table: Called with each batch's table as it is collected (the streamed write).
    """
    t_start = time.perf_counter()
    gpu_before = predictor.gpu_seconds if isinstance(predictor, AsyncPredictor) else None  # a running total
    batches: list[ChipTable] = []
    grid = cell_array(cells)  # made without a Python object per cell for a grid or strip
    valid = np.zeros(len(grid), np.float32)  # each cell's valid fraction, filled in as runs are read
    in_flight: deque[tuple[np.ndarray, Pending]] = deque()  # cell indexes of a batch, its probabilities
    uploading: deque[tuple[list[Run], Pending]] = deque()  # direct uploads: runs freed once uploaded
    parts: list[np.ndarray] = []
    part_cells: list[np.ndarray] = []  # cell indexes of ``parts``
    held: list[Run] = []  # runs whose last kept chips are in ``parts``
    n_batch = 0
    skipped = 0
    read_seconds = 0.0
    t = {"wait_read": 0.0, "submit": 0.0, "wait_upload": 0.0, "wait_infer": 0.0}

    def collect_one() -> None:
        index, pending = in_flight.popleft()
        t0 = time.perf_counter()
        p = pending.result()
        t["wait_infer"] += time.perf_counter() - t0
        batches.append(ChipTable(*grid[index].T, valid[index], p.astype(np.float32, copy=False)))
        if on_table:
            on_table(batches[-1])
        if progress:
            progress(len(index))

    def release_uploaded(keep: int) -> None:
        """Free the slots of all but the ``keep`` newest batches, once their chips are on the device."""
        while len(uploading) > keep:
            runs, pending = uploading.popleft()
            t0 = time.perf_counter()
            pending.uploaded()
            t["wait_upload"] += time.perf_counter() - t0
            for r in runs:
                r.release()

    def submit(done_runs: list[Run]) -> None:
        """Hand the gathered chips to the model; ``done_runs`` (whose last chips these are) are freed after."""
        nonlocal n_batch
        if not parts:
            return
        t0 = time.perf_counter()
        pending = submitter.submit(parts)
        t["submit"] += time.perf_counter() - t0
        in_flight.append((np.concatenate(part_cells), pending))
        if submitter.direct:  # uploads run in order: the previous batch is on the device by now
            uploading.append((list(done_runs), pending))
            release_uploaded(keep=1)
        else:  # the chips were copied before submit returned
            for r in done_runs:
                r.release()
        parts.clear()
        part_cells.clear()
        held.clear()
        n_batch = 0
        while len(in_flight) > DEPTH:
            collect_one()

    def n_holding() -> int:
        return len(held) + sum(len(runs) for runs, _ in uploading)

    # The reads (and their GDAL settings) are the reader processes'; this thread does none.
    # The pool (readers, slots) is this process's, kept from one scene or strip to the next.
    with ProcessFeed(reader, cells, workers=workers, hold_chips=2 * batch_size, pool=shared_pool(workers)) as feed:
        feed.start()  # the readers start up while the slots are page-locked
        t0 = time.perf_counter()
        submitter, direct = pinned_submitter(feed.pool, predictor)  # page-locks the slots on CUDA, once
        t["host_register"] = time.perf_counter() - t0
        try:
            runs = iter(feed)
            while True:
                t0 = time.perf_counter()
                run = next(runs, None)
                t["wait_read"] += time.perf_counter() - t0
                if run is None:
                    break
                read_seconds += run.seconds
                skipped += run.n_skipped
                if progress and run.n_skipped:
                    progress(run.n_skipped)
                n_kept = len(run.kept)
                valid[run.first:run.first + len(run.cells)] = run.valid
                index = run.first + run.kept
                start = 0
                while start < n_kept:
                    take = min(batch_size - n_batch, n_kept - start)
                    parts.append(run.pixels[start:start + take])
                    part_cells.append(index[start:start + take])
                    n_batch += take
                    start += take
                    if n_batch >= batch_size:
                        submit(held + [run] if start >= n_kept else list(held))
                if n_kept == 0:
                    run.release()
                elif n_batch:
                    held.append(run)  # its last chips wait in the batch being gathered
                    if n_holding() >= feed.max_held:  # sparse runs: keep the readers in slots
                        release_uploaded(keep=0)
                        if len(held) >= feed.max_held:
                            submit(list(held))
            submit(list(held))
            release_uploaded(keep=0)
            while in_flight:
                collect_one()
        except BaseException:
            # Uploads may still read the slots the next feed takes: wait for them, page-lock afresh next time.
            feed.pool.detach(_submitter_key(predictor))
            raise

    wall = time.perf_counter() - t_start
    table = ChipTable.concat(batches, n_labels)  # into grid order
    table.n_skipped_nodata = skipped
    gpu = predictor.gpu_seconds - gpu_before if gpu_before is not None else 0.0
    table.seconds_read = read_seconds
    table.seconds_infer = gpu if gpu else t["wait_infer"] + t["submit"]
    table.extra["timings"] = {
        "wall": wall, "reader_startup": feed.startup_seconds, "readers": feed.workers,
        "read_in_readers": read_seconds, "direct_upload": direct, **t,
    }
    return table

