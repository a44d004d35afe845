"""Reader processes that feed chips through shared memory.

One Python thread reading one chip per GDAL call tops out at a few thousand
chips per second (GDAL's locks and per-call costs), far below what a GPU
classifies.  :class:`ProcessFeed` runs reader *processes*, each with its own
dataset handle, and hands them *runs* of neighbouring cells of one grid row,
read with one mask read and one data read (:meth:`ChipReader.read_run`).
:class:`ReaderMode` names the ways a job may read: threads or these processes.

Pixels never go through a pipe: the feed owns a ring of slots in one
shared-memory block, a reader writes a run's kept chips into the slot it was
given, and only the small metadata comes back.  The consumer takes a
:class:`Run` (a :class:`~scenetag.tiler.reader.RunRead` whose pixels are a
view into its slot), copies the pixels where it needs them or uploads them
straight from the slot (the whole :attr:`ProcessFeed.memory`
can be page-locked for that), and calls :meth:`Run.release` once it is done
with them, so the slot can take another run.  At most
``slots`` runs are in flight, so memory stays flat whatever the scene size.

The processes and the block belong to a
:class:`~scenetag.tiler.reader_pool.ReaderPool`, which a feed borrows:
:func:`~scenetag.tiler.reader_pool.shared_pool` keeps one per process, so
that a program (``run`` over many scenes, a Dask worker over its scenes and
strips) starts readers and page-locks their slots once, not per scene.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import pickle
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import numpy as np

from scenetag.tiler.grid import GridCell, as_strip
from scenetag.tiler.reader import ChipReader, RunRead
from scenetag.tiler.reader_pool import ReaderPool

log = logging.getLogger(__name__)

#: Cells per task: wide enough that GDAL's per-call costs vanish, small enough
#: that a slot stays a few MB.
CELLS_PER_RUN = 32


class ReaderMode(str, enum.Enum):
    """How a job reads its chips."""

    #: Processes when the model runs on a GPU (and the grid is large enough), threads otherwise.
    AUTO = "auto"
    #: Reader threads, one chip per read (for CPU models).
    THREADS = "threads"
    #: Reader processes, runs of chips into shared memory (:class:`ProcessFeed`, to feed a GPU).
    PROCESSES = "processes"


def iter_runs(cells: Iterable[GridCell], per_run: int = CELLS_PER_RUN) -> Iterator[list[GridCell]]:
    """``cells`` cut into runs of at most ``per_run`` consecutive cells of one grid row, as they are iterated."""
    current: list[GridCell] = []
    for cell in cells:
        if current and (cell.row != current[-1].row or len(current) >= per_run):
            yield current
            current = []
        current.append(cell)
    if current:
        yield current


def runs_of(cells: Iterable[GridCell], per_run: int = CELLS_PER_RUN) -> list[list[GridCell]]:
    """``cells`` cut into runs of at most ``per_run`` consecutive cells of one grid row."""
    return list(iter_runs(cells, per_run))


def run_shape(cells: Sequence[GridCell], per_run: int = CELLS_PER_RUN) -> tuple[int, int]:
    """``(longest run, number of runs)`` of ``cells`` cut by :func:`iter_runs`.

    Counted from the shape of a grid or strip (whose runs are whole chip rows
    cut every ``per_run`` cells) without making its cells; other sequences
    are iterated.
    """
    strip = as_strip(cells)
    if strip is None:
        lengths = [len(r) for r in iter_runs(cells, per_run)]
        return max(lengths, default=1), len(lengths)
    n_rows, n_cols = strip.row_stop - strip.row_start, strip.n_cols
    if n_rows == 0 or n_cols == 0:
        return 1, 0
    return min(per_run, n_cols), n_rows * -(-n_cols // per_run)


class _Lease:
    """A slot lent to the consumer; it goes back to the feed once, however often it is released."""

    def __init__(self, feed: "ProcessFeed", slot: int) -> None:
        self._feed: ProcessFeed | None = feed
        self._slot = slot

    def release(self) -> None:
        if self._feed is not None:
            self._feed._release(self._slot)
            self._feed = None


@dataclass(frozen=True, eq=False)
class Run(RunRead):
    """A run read by a reader process: its :class:`RunRead` (pixels in the feed's shared memory) and where it sits."""

    #: Index of the run's first cell among the cells the feed was given.
    first: int = 0
    #: Seconds the reader process took over it.
    seconds: float = 0.0
    _lease: _Lease | None = field(default=None, repr=False)

    def release(self) -> None:
        """Give the slot back; ``pixels`` must not be used afterwards."""
        if self._lease is not None:
            self._lease.release()


class ProcessFeed:
    """Reads cells on reader processes; iterate for :class:`Run` results, in completion order.

    Args:
        reader: A configured (not yet used) :class:`ChipReader`; it is pickled to each process.
        cells: The cells to read.
        workers: Reader processes (default :func:`~scenetag.tiler.reader_pool.default_workers`).
        per_run: Cells per task.
        slots: Runs in flight (default: twice the workers, plus two, plus the runs that
            ``hold_chips`` chips span).
        cachemax_mb: GDAL block cache per process (default :func:`scenetag.config.gdal_cachemax_mb`).
        hold_chips: Chips the consumer keeps in slots at once (say, the batch being
            gathered and the one being uploaded); their slots come on top of the readers'.
        pool: The :class:`ReaderPool` to read with (say
            :func:`~scenetag.tiler.reader_pool.shared_pool`), kept open after the feed; None, or
            a pool another feed has now, reads with a pool of the feed's own, closed with it.
    """

    def __init__(self, reader: ChipReader, cells: Sequence[GridCell], workers: int | None = None,
                 per_run: int = CELLS_PER_RUN, slots: int | None = None, cachemax_mb: int | None = None,
                 hold_chips: int = 0, pool: ReaderPool | None = None) -> None:
        # The runs are cut as the readers need them (a grid is lazy: listing its
        # runs would hold a Python object per cell); only their shape is needed here.
        self.per_run, self.n_runs = run_shape(cells, per_run)
        if pool is not None and not pool.try_lend():
            log.debug("the reader pool is reading another feed: this one starts readers of its own")
            pool = None
        self._own = pool is None
        self.pool = ReaderPool(workers, cachemax_mb) if pool is None else pool
        if self._own:
            self.pool.try_lend()
        self._closed = False
        self.workers = self.pool.workers
        mean_run = len(cells) / max(1, self.n_runs)
        hold = -(-int(hold_chips) // max(1, int(mean_run))) + 1 if hold_chips > 0 else 0
        nb, size = len(reader.bands), reader.chip_size
        self._shape = (self.per_run, nb, size, size)
        try:
            self.n_slots = self.pool.prepare(int(slots or 2 * self.workers + 2 + hold), int(np.prod(self._shape)))
        except BaseException:
            self.close()
            raise
        need = int(np.prod(self._shape))
        block = self.pool.memory
        self._slots = [block[i, :need].reshape(self._shape) for i in range(self.n_slots)]
        # Pickled once, sent with every run: a reader process unpickles (opens) it once per scene.
        self._blob = pickle.dumps(reader)
        self._token = hashlib.blake2b(self._blob, digest_size=12).hexdigest()
        self._free = list(range(self.n_slots))
        self._lock = threading.Lock()
        self.startup_seconds = 0.0
        self._t0 = time.perf_counter()
        self._pending: dict[Future, tuple[list[GridCell], int, int]] = {}
        self._todo = iter_runs(cells, per_run)
        self._first = 0  # index of the next run's first cell
        self._exhausted = False

    @property
    def memory(self) -> np.ndarray:
        """Every slot, as one array in shared memory (for page-locking it; see :class:`Run`)."""
        return self.pool.memory

    @property
    def max_held(self) -> int:
        """Runs the consumer may hold at once and still leave every reader a slot to read into."""
        return max(1, self.n_slots - self.workers)

    def _release(self, slot: int) -> None:
        with self._lock:
            self._free.append(slot)

    def _take_slot(self) -> int | None:
        with self._lock:
            return self._free.pop() if self._free else None

    def start(self) -> None:
        """Hand the readers their first runs now, so they start while the caller gets ready.

        Iterating starts them anyway; this only lets their start-up overlap
        the caller's own (page-locking :attr:`memory`, say).
        """
        self._fill()

    def _fill(self) -> None:
        """Give a free slot and the next run to the readers, while both are left."""
        while not self._exhausted:
            slot = self._take_slot()
            if slot is None:
                return
            cells = next(self._todo, None)
            if cells is None:
                self._release(slot)
                self._exhausted = True
                return
            fut = self.pool.submit(self._token, self._blob, self._shape, cells, slot)
            self._pending[fut] = cells, slot, self._first
            self._first += len(cells)

    def __iter__(self) -> Iterator[Run]:
        started = False
        try:
            while True:
                self._fill()
                if not self._pending:
                    if self._exhausted:
                        return
                    raise RuntimeError("every slot is held by the consumer: release runs as they are used")
                done, _ = wait(list(self._pending), timeout=0.5, return_when=FIRST_COMPLETED)
                for fut in done:
                    cells, slot, first = self._pending.pop(fut)
                    kept, valid, seconds = fut.result()
                    if not started:
                        self.startup_seconds = time.perf_counter() - self._t0
                        started = True
                    yield Run(tuple(cells), kept, valid, self._slots[slot][:len(kept)], first, seconds,
                              _Lease(self, slot))
        finally:
            for fut in self._pending:
                fut.cancel()

    def close(self) -> None:
        """Give the pool back once no run of this feed is being read (and close the feed's own pool)."""
        if self._closed:
            return
        self._closed = True
        pending = list(getattr(self, "_pending", {}))
        for fut in pending:
            fut.cancel()
        wait(pending)  # a run still being read writes into a slot that the next feed may take
        self._slots = []
        self.pool.give_back()
        if self._own:
            self.pool.close()

    def __enter__(self) -> "ProcessFeed":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
