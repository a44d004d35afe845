"""Shared-memory blocks of the reader pools: named by their owner, so a killed owner's are found and freed.

A block lives in /dev/shm (on Linux) under ``scenetag_<owner pid>_<8 hex>``
(:func:`block_name`).  An owner killed by ``kill -9`` never unlinks its
block; :func:`sweep_segments` unlinks every block whose owner is dead, and
the first pool that starts in a process calls it (:func:`sweep_segments_once`).
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

from scenetag.processes import pid_alive

log = logging.getLogger(__name__)

#: Shared-memory blocks of the reader pools are named ``scenetag_<owner pid>_<8 hex>``.
SHM_PREFIX = "scenetag_"
_SHM_DIR = Path("/dev/shm")

_swept = False


def block_name(owner: int | None = None) -> str:
    """A new block's name, owned by ``owner`` (default: this process)."""
    return f"{SHM_PREFIX}{owner or os.getpid()}_{uuid.uuid4().hex[:8]}"


def shm_free_bytes() -> int | None:
    """Free bytes in /dev/shm, where shared memory lives on Linux (None elsewhere)."""
    try:
        st = os.statvfs(_SHM_DIR)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def sweep_segments() -> list[str]:
    """Unlink the pools' shared-memory blocks whose owner process is dead (a ``kill -9``); their names."""
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


def sweep_segments_once() -> None:
    """:func:`sweep_segments`, the first time a pool starts in this process (not for every scene or strip).

    Not at batch start: each Dask host has its own /dev/shm.
    """
    global _swept
    if not _swept:
        _swept = True
        sweep_segments()
