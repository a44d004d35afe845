"""What runs inside a reader process: its start, the scenes it keeps open, and the read of one run.

Reader processes come from a fork server that has imported this module (and
with it GDAL), :func:`context`; each is started with :func:`init_reader`
and then reads runs with :func:`read_run` into the slot it is given in its
pool's shared-memory block.  Only small metadata goes back through the pipe.
A process keeps the opened :class:`~scenetag.tiler.reader.ChipReader` of
the last :data:`READERS_KEPT` scenes, so the strips of one scene open it once
per process, and it ends as soon as its owner does (:func:`die_with_owner`).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import signal
import threading
import time
from collections import OrderedDict
from multiprocessing.shared_memory import SharedMemory

import numpy as np

from scenetag.processes import pid_alive
from scenetag.tiler.cloud import gdal_env
from scenetag.tiler.grid import GridCell
from scenetag.tiler.reader import ChipReader

#: Scenes whose opened :class:`ChipReader` a reader process keeps (the scene being read and the one
#: before it, whose last runs may still come), so that the strips of one scene open it once per process.
READERS_KEPT = 2
#: How often a reader looks whether its owner is still alive (seconds).
_OWNER_POLL_S = 0.25

#: This reader process's state: its GDAL settings, the block it is attached to, its opened scenes.
_state: dict = {"readers": OrderedDict()}


def context() -> mp.context.BaseContext:
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


def die_with_owner(owner: int) -> None:
    """Make this reader process end as soon as ``owner`` (the pool's process) dies, even by ``kill -9``.

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


def init_reader(cachemax_mb: int, owner: int) -> None:
    """A reader process's start: die with ``owner``, and read inside the project's GDAL settings."""
    die_with_owner(owner)
    _state["env"] = gdal_env(cachemax_mb)
    _state["env"].__enter__()


def _slot_block(shm_name: str, n_slots: int, slot_bytes: int) -> np.ndarray:
    """The pool's block of slots as ``(n_slots, slot_bytes)``, attached once per block (it is re-made when it grows)."""
    if _state.get("shm_name") != shm_name:
        old = _state.pop("shm", None)
        _state["block"] = None
        if old is not None:
            try:
                old.close()
            except BufferError:  # pragma: no cover - a view outlived its read; the mapping goes with the process
                pass
        shm = SharedMemory(name=shm_name)
        _state["shm"], _state["shm_name"] = shm, shm_name  # keep the mapping alive
        _state["block"] = np.ndarray((n_slots, slot_bytes), np.uint8, buffer=shm.buf)
    return _state["block"]


def _scene_reader(token: str, blob: bytes) -> ChipReader:
    """The opened reader of scene ``token`` (unpickled from ``blob`` the first time), the last few kept."""
    readers: OrderedDict[str, ChipReader] = _state["readers"]
    reader = readers.get(token)
    if reader is None:
        reader = readers[token] = pickle.loads(blob)
        while len(readers) > READERS_KEPT:
            readers.popitem(last=False)[1].close()
    else:
        readers.move_to_end(token)
    return reader


def read_run(shm_name: str, n_slots: int, slot_bytes: int, token: str, blob: bytes,
             shape: tuple[int, ...], cells: list[GridCell], slot: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Read the run ``cells`` of scene ``token`` into ``slot`` of the block; its kept and valid arrays, and seconds."""
    t0 = time.perf_counter()
    room = _slot_block(shm_name, n_slots, slot_bytes)[slot, :int(np.prod(shape))].reshape(shape)
    r = _scene_reader(token, blob).read_run(cells, out=room)
    return r.kept, r.valid, time.perf_counter() - t0
