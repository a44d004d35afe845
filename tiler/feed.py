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

The processes and the block belong to a :class:`ReaderPool`, which a feed
borrows: :func:`shared_pool` keeps one per process, so that a program (``run``
over many scenes, a Dask worker over its scenes and strips) starts readers
and page-locks their slots once, not per scene.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import logging
import multiprocessing as mp
import multiprocessing.util as mp_util
import os
import pickle
import signal
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from scenetag.config import gdal_cachemax_mb
from scenetag.tiler.cloud import gdal_env
from scenetag.errors import SceneReadError
from scenetag.processes import pid_alive
from scenetag.tiler.grid import GridCell, as_strip
from scenetag.tiler.reader import ChipReader, RunRead

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


def default_workers() -> int:
    """Reader processes by default: one per usable core, less one for the consumer thread.

    Measured on the 16-core H200 host with chips uploaded straight from the
    slots (docs/performance.md, run 4): 14, 15 and 16 readers gave 0.61, 0.67
    and 0.60 of model-only bf16; with 16 the consumer thread lost its core.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(16, cores - 1))


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


def _shm_free_bytes() -> int | None:
    """Free bytes in /dev/shm, where shared memory lives on Linux (None elsewhere)."""
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _context() -> mp.context.BaseContext:
    """Where reader processes come from: a fork server that has imported this module (and GDAL).

    Forked from it, a reader starts without importing rasterio again; the
    server starts once per program, so later scenes start their readers in a
    fraction of the time.  It is a fresh process, never the caller (which may
    hold CUDA state or threads that must not be forked).
    """
    if "forkserver" not in mp.get_all_start_methods():  # pragma: no cover - not Linux
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    return ctx


#: Shared-memory blocks of the feeds are named ``scenetag_<owner pid>_<8 hex>``, so a killed
#: owner's blocks can be found and freed (:func:`sweep_segments`).
SHM_PREFIX = "scenetag_"
_SHM_DIR = Path("/dev/shm")


_swept = False


def _sweep_segments_once() -> None:
    """:func:`sweep_segments`, the first time a feed starts in this process (not for every scene or strip).

    Not at batch start: each Dask host has its own /dev/shm.
    """
    global _swept
    if not _swept:
        _swept = True
        sweep_segments()


def sweep_segments() -> list[str]:
    """Unlink the feeds' shared-memory blocks whose owner process is dead (a ``kill -9``); their names."""
    removed = []
    for path in _SHM_DIR.glob(f"{SHM_PREFIX}*_*") if _SHM_DIR.is_dir() else ():
        owner = path.name[len(SHM_PREFIX):].split("_", 1)[0]
        if owner.isdigit() and not pid_alive(int(owner)):
            try:
                path.unlink()
                removed.append(path.name)
            except OSError:
                continue
    if removed:
        log.warning("freed %d shared-memory block(s) left by killed runs: %s", len(removed), ", ".join(removed))
    return removed


#: How often a reader looks whether its owner is still alive (seconds).
_OWNER_POLL_S = 0.25


def _die_with_owner(owner: int) -> None:
    """Make this reader process end as soon as ``owner`` (the feed's process) dies, even by ``kill -9``.

    A reader is a child of the fork server, and every child keeps the fork
    server alive, so neither notices the owner's death until its pipes time
    out (tens of seconds).  A reader therefore asks the kernel to kill it with
    its parent (``PR_SET_PDEATHSIG``, Linux) and watches the owner itself; it
    also looks once at the start, since the owner may be gone already.
    """
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass

    def watch() -> None:
        while pid_alive(owner) and os.getppid() != 1:
            time.sleep(_OWNER_POLL_S)
        os._exit(0)  # nothing of a reader's is worth a clean exit: its owner is gone

    if not pid_alive(owner):
        os._exit(0)
    threading.Thread(target=watch, name="owner-watch", daemon=True).start()


# --- in the reader processes -------------------------------------------------

#: Scenes whose opened :class:`ChipReader` a reader process keeps (the scene being read and the one
#: before it, whose last runs may still come), so that the strips of one scene open it once per process.
READERS_KEPT = 2

_worker: dict = {"readers": OrderedDict()}


def _init_worker(cachemax_mb: int, owner: int) -> None:
    _die_with_owner(owner)
    _worker["env"] = gdal_env(cachemax_mb)
    _worker["env"].__enter__()


def _slot_block(shm_name: str, n_slots: int, slot_bytes: int) -> np.ndarray:
    """The pool's block of slots as ``(n_slots, slot_bytes)``, attached once per block (it is re-made when it grows)."""
    if _worker.get("shm_name") != shm_name:
        old = _worker.pop("shm", None)
        _worker["block"] = None
        if old is not None:
            try:
                old.close()
            except BufferError:  # pragma: no cover - a view outlived its read; the mapping goes with the process
                pass
        shm = SharedMemory(name=shm_name)
        _worker["shm"], _worker["shm_name"] = shm, shm_name  # keep the mapping alive
        _worker["block"] = np.ndarray((n_slots, slot_bytes), np.uint8, buffer=shm.buf)
    return _worker["block"]


def _scene_reader(token: str, blob: bytes) -> ChipReader:
    """The opened reader of scene ``token`` (unpickled from ``blob`` the first time), the last few kept."""
    readers: OrderedDict[str, ChipReader] = _worker["readers"]
    reader = readers.get(token)
    if reader is None:
        reader = readers[token] = pickle.loads(blob)
        while len(readers) > READERS_KEPT:
            readers.popitem(last=False)[1].close()
    else:
        readers.move_to_end(token)
    return reader


def _read_run(shm_name: str, n_slots: int, slot_bytes: int, token: str, blob: bytes,
              shape: tuple[int, ...], cells: list[GridCell], slot: int) -> tuple[np.ndarray, np.ndarray, float]:
    t0 = time.perf_counter()
    room = _slot_block(shm_name, n_slots, slot_bytes)[slot, :int(np.prod(shape))].reshape(shape)
    r = _scene_reader(token, blob).read_run(cells, out=room)
    return r.kept, r.valid, time.perf_counter() - t0


def _pid() -> int:
    return os.getpid()


# --- in the consumer ---------------------------------------------------------


class ReaderPool:
    """Reader processes and a shared-memory block of slots, kept from one feed (scene, strip) to the next.

    Starting readers and page-locking their slots costs a few tenths of a
    second (docs/performance.md); a pool pays it once for all the scenes and
    strips its process reads, where a feed of its own pays it per feed.  Each
    :class:`ProcessFeed` borrows the pool (one feed at a time) and sends its
    scene's pickled :class:`ChipReader` with every run; a reader process
    opens it once and keeps the last :data:`READERS_KEPT`.  The block grows
    (is made again) when a feed needs more or larger slots than any before;
    the readers attach to the new one by name.

    Things tied to the block (the page-locking of it for a predictor) are
    kept with :meth:`attached` and undone before the block is freed.

    The processes come from a fork server (:func:`_context`) and die with the
    pool's process, even when it is killed (:func:`_die_with_owner`); the
    block is named by its owner (:data:`SHM_PREFIX`) so that a killed owner's
    block is freed by the next feed on the machine (:func:`sweep_segments`).
    """

    def __init__(self, workers: int | None = None, cachemax_mb: int | None = None) -> None:
        self.workers = int(workers or default_workers())
        self.cachemax_mb = gdal_cachemax_mb(cachemax_mb)
        self.owner = os.getpid()
        self.n_slots = 0
        self.slot_bytes = 0
        #: How often reader processes were started (once, unless they died).
        self.starts = 0
        self.closed = False
        self._executor: ProcessPoolExecutor | None = None
        self._shm: SharedMemory | None = None
        self._block: np.ndarray | None = None
        self._lent = threading.Lock()
        self._attached: OrderedDict[Any, tuple[contextlib.ExitStack, Any]] = OrderedDict()

    @property
    def shm_name(self) -> str:
        return self._shm.name if self._shm is not None else ""

    @property
    def memory(self) -> np.ndarray:
        """Every slot, as one contiguous array in shared memory (for page-locking it)."""
        return self._block

    def try_lend(self) -> bool:
        """Take the pool for one feed; False when another feed has it (it is lent to one at a time)."""
        return not self.closed and self._lent.acquire(blocking=False)

    def give_back(self) -> None:
        self._lent.release()

    def prepare(self, n_slots: int, slot_bytes: int) -> int:
        """Readers running and room for ``n_slots`` slots of ``slot_bytes``; returns the slots there are.

        Fewer than asked when /dev/shm is short (at least two, else a :class:`SceneReadError`).
        """
        if self._executor is not None and getattr(self._executor, "_broken", False):
            self._stop_readers()  # a reader died (killed, out of memory): start them again
        if self._executor is None:
            _sweep_segments_once()
            self._executor = ProcessPoolExecutor(self.workers, mp_context=_context(), initializer=_init_worker,
                                                 initargs=(self.cachemax_mb, self.owner))
            self.starts += 1
        if n_slots > self.n_slots or slot_bytes > self.slot_bytes:
            self._grow(max(n_slots, self.n_slots), max(slot_bytes, self.slot_bytes))
        return min(n_slots, self.n_slots)

    def _grow(self, n_slots: int, slot_bytes: int) -> None:
        room = _shm_free_bytes()
        if self._shm is not None and room is not None:
            room += self.n_slots * self.slot_bytes  # the old block goes first
        if room is not None and n_slots * slot_bytes > room // 2:
            fit = int(room // 2 // slot_bytes)
            if fit < 2:
                raise SceneReadError(
                    f"shared memory (/dev/shm) has {room / 2**20:.0f} MiB free, too little for the reader "
                    f"processes ({2 * slot_bytes / 2**20:.0f} MiB at least): enlarge /dev/shm or use --reader threads"
                )
            log.warning("/dev/shm has %.0f MiB free: %d reader slots instead of %d", room / 2**20, fit, n_slots)
            n_slots = fit
        self._free_block()
        self._shm = SharedMemory(name=f"{SHM_PREFIX}{os.getpid()}_{uuid.uuid4().hex[:8]}", create=True,
                                 size=max(1, n_slots * slot_bytes))
        self._block = np.ndarray((n_slots, slot_bytes), np.uint8, buffer=self._shm.buf)
        self.n_slots, self.slot_bytes = n_slots, slot_bytes

    def attached(self, key: Any, enter: Callable[[contextlib.ExitStack], Any], keep: int = 2) -> Any:
        """What ``enter(stack)`` returned for ``key`` on this block, made once; the stack is closed when
        the block is freed, or when more than ``keep`` keys are held (the oldest goes)."""
        if key in self._attached:
            self._attached.move_to_end(key)
            return self._attached[key][1]
        stack = contextlib.ExitStack()
        try:
            value = enter(stack)
        except BaseException:
            stack.close()
            raise
        self._attached[key] = (stack, value)
        while len(self._attached) > keep:
            self._attached.popitem(last=False)[1][0].close()
        return value

    def detach(self, key: Any) -> None:
        """Undo what :meth:`attached` made for ``key`` (after a failure: it waits for the uploads in flight)."""
        entry = self._attached.pop(key, None)
        if entry is not None:
            entry[0].close()

    def submit(self, *args: Any) -> Future:
        return self._executor.submit(_read_run, self.shm_name, self.n_slots, self.slot_bytes, *args)

    def reader_pids(self) -> list[int]:
        """PIDs of the reader processes running now (for tests and diagnostics)."""
        procs = getattr(self._executor, "_processes", None) or {}
        return sorted(p.pid for p in procs.values() if p.is_alive())

    def _free_block(self) -> None:
        while self._attached:
            self._attached.popitem(last=False)[1][0].close()
        if self._shm is None:
            return
        self._block = None
        try:
            self._shm.close()
        except BufferError:  # a consumer still holds a view; the mapping goes with it
            pass
        try:
            self._shm.unlink()
        except FileNotFoundError:  # pragma: no cover - swept meanwhile
            pass
        self._shm = None
        self.n_slots = self.slot_bytes = 0

    def _stop_readers(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def close(self) -> None:
        """Stop the processes and free the shared memory."""
        if self.closed:
            return
        self.closed = True
        if os.getpid() != self.owner:  # pragma: no cover - a forked copy: the owner closes it
            return
        self._stop_readers()
        self._free_block()

    def __enter__(self) -> "ReaderPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_shared: dict[tuple[int, int], ReaderPool] = {}
_shared_lock = threading.Lock()
_finalizer: mp_util.Finalize | None = None


def shared_pool(workers: int | None = None, cachemax_mb: int | None = None) -> ReaderPool:
    """This process's :class:`ReaderPool` of ``workers`` readers, started on first use and closed at exit.

    ``run`` over several scenes in one program, and a Dask worker over its
    scenes and strips, read through it, so readers start and their slots are
    page-locked once per process.
    """
    global _finalizer
    key = (int(workers or default_workers()), gdal_cachemax_mb(cachemax_mb))
    with _shared_lock:
        pool = _shared.get(key)
        if pool is None or pool.closed or pool.owner != os.getpid():
            if _finalizer is None:
                # Not atexit: a multiprocessing child (a Dask worker under its nanny) ends with os._exit,
                # after multiprocessing's own finalizers, which also run at a main program's exit.
                _finalizer = mp_util.Finalize(None, close_shared_pools, exitpriority=100)
            pool = _shared[key] = ReaderPool(*key)
        return pool


def shared_pools() -> list[ReaderPool]:
    """This process's open shared pools."""
    with _shared_lock:
        return [p for p in _shared.values() if not p.closed]


def pool_state() -> dict:
    """This process's shared pools: reader starts and the reader PIDs now (what ``batch`` tests ask workers)."""
    pools = shared_pools()
    return {"pid": os.getpid(), "starts": sum(p.starts for p in pools),
            "readers": sorted(pid for p in pools for pid in p.reader_pids()),
            "blocks": [p.shm_name for p in pools if p.shm_name]}


def close_shared_pools() -> None:
    """Close this process's shared pools (at exit; also when a worker's model is withdrawn)."""
    with _shared_lock:
        pools = list(_shared.values())
        _shared.clear()
    for pool in pools:
        pool.close()


class ProcessFeed:
    """Reads cells on reader processes; iterate for :class:`Run` results, in completion order.

    Args:
        reader: A configured (not yet used) :class:`ChipReader`; it is pickled to each process.
        cells: The cells to read.
        workers: Reader processes (default :func:`default_workers`).
        per_run: Cells per task.
        slots: Runs in flight (default: twice the workers, plus two, plus the runs that
            ``hold_chips`` chips span).
        cachemax_mb: GDAL block cache per process (default :func:`scenetag.config.gdal_cachemax_mb`).
        hold_chips: Chips the consumer keeps in slots at once (say, the batch being
            gathered and the one being uploaded); their slots come on top of the readers'.
        pool: The :class:`ReaderPool` to read with (say :func:`shared_pool`), kept open after
            the feed; None, or a pool another feed has now, reads with a pool of the feed's own,
            closed with it.
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
