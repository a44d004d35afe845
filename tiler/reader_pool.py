"""Reader processes and their shared-memory slots, kept from one feed to the next.

A :class:`ReaderPool` owns the reader processes (:mod:`tiler.reader_process`)
and one shared-memory block of slots (:mod:`tiler.shared_blocks`); each
:class:`~scenetag.tiler.feed.ProcessFeed` borrows it for one scene or strip.
:func:`shared_pool` keeps one per process, so that a program (``run`` over
many scenes, a Dask worker over its scenes and strips) starts readers and
page-locks their slots once, not per scene.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import OrderedDict
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing.shared_memory import SharedMemory
from typing import Any, Callable

import numpy as np

from scenetag.config import gdal_cachemax_mb
from scenetag.errors import SceneReadError
from scenetag.processes import at_exit
from scenetag.tiler.reader_process import context, init_reader, read_run
from scenetag.tiler.shared_blocks import block_name, shm_free_bytes, sweep_segments_once

log = logging.getLogger(__name__)


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


class ReaderPool:
    """Reader processes and a shared-memory block of slots, kept from one feed (scene, strip) to the next.

    Starting readers and page-locking their slots costs a few tenths of a
    second (docs/performance.md); a pool pays it once for all the scenes and
    strips its process reads, where a feed of its own pays it per feed.  Each
    :class:`ProcessFeed` borrows the pool (one feed at a time) and sends its
    scene's pickled :class:`ChipReader` with every run; a reader process
    opens it once and keeps the last
    :data:`~scenetag.tiler.reader_process.READERS_KEPT`.  The block grows
    (is made again) when a feed needs more or larger slots than any before;
    the readers attach to the new one by name.

    Things tied to the block (the page-locking of it for a predictor) are
    kept with :meth:`attached` and undone before the block is freed.

    The processes come from a fork server (:func:`~scenetag.tiler.reader_process.context`) and die
    with the pool's process, even when it is killed (:func:`~scenetag.tiler.reader_process.die_with_owner`);
    the block is named by its owner (:func:`~scenetag.tiler.shared_blocks.block_name`) so that a killed owner's
    block is freed by the next feed on the machine (:func:`~scenetag.tiler.shared_blocks.sweep_segments`).
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
            sweep_segments_once()
            self._executor = ProcessPoolExecutor(self.workers, mp_context=context(), initializer=init_reader,
                                                 initargs=(self.cachemax_mb, self.owner))
            self.starts += 1
        if n_slots > self.n_slots or slot_bytes > self.slot_bytes:
            self._grow(max(n_slots, self.n_slots), max(slot_bytes, self.slot_bytes))
        return min(n_slots, self.n_slots)

    def _grow(self, n_slots: int, slot_bytes: int) -> None:
        room = shm_free_bytes()
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
        self._shm = SharedMemory(name=block_name(), create=True, size=max(1, n_slots * slot_bytes))
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
        return self._executor.submit(read_run, self.shm_name, self.n_slots, self.slot_bytes, *args)

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


def shared_pool(workers: int | None = None, cachemax_mb: int | None = None) -> ReaderPool:
    """This process's :class:`ReaderPool` of ``workers`` readers, started on first use and closed at exit.

    ``run`` over several scenes in one program, and a Dask worker over its
    scenes and strips, read through it, so readers start and their slots are
    page-locked once per process.
    """
    key = (int(workers or default_workers()), gdal_cachemax_mb(cachemax_mb))
    with _shared_lock:
        pool = _shared.get(key)
        if pool is None or pool.closed or pool.owner != os.getpid():
            at_exit(close_shared_pools, priority=100)  # also in a Dask worker, which never runs atexit
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
