"""Removing the temporary outputs that a killed run left behind."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from scenetag.atomic import TMP_GLOB, temporary_owner, this_host
from scenetag.processes import pid_alive

log = logging.getLogger(__name__)


def is_stale(tmp: Path, min_age_s: float, now: float | None = None) -> bool:
    """Whether ``tmp`` is a leftover that no live process owns.

    Its name says which process wrote it (:func:`~scenetag.atomic.temporary_owner`):
    on this host, it is stale exactly when that process is dead.  A writer on
    another host (a Dask worker on shared storage) can't be asked, nor can a
    name without an owner: those are stale when older than ``min_age_s``.
    """
    owner = temporary_owner(tmp)
    if owner is not None and owner[0] == this_host():
        return not pid_alive(owner[1])
    now = time.time() if now is None else now
    return now - tmp.stat().st_mtime >= min_age_s


def sweep_leftovers(out_dir: Path, min_age_s: float = 3600.0) -> list[Path]:
    """Remove the writers' temporary files that killed runs left in ``out_dir``; returns those removed.

    ``run`` and ``batch`` call it before they write into a folder.  A
    temporary of a live writer (another ``run`` writing into the same folder
    at this moment) is kept: see :func:`is_stale`.
    """
    removed = []
    now = time.time()
    for tmp in Path(out_dir).glob(TMP_GLOB):
        try:
            if is_stale(tmp, min_age_s, now):
                tmp.unlink()
                removed.append(tmp)
        except FileNotFoundError:
            continue
        except OSError as exc:  # not ours to remove, say: leave it, and say so
            log.warning("could not remove the leftover temporary %s: %s", tmp, exc)
    if removed:
        log.warning("removed %d temporary file(s) left by an interrupted run in %s", len(removed), out_dir)
    return removed
