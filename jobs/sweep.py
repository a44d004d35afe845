"""Removing the temporary outputs that a killed run left behind."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from scenetag.atomic import TMP_GLOB

log = logging.getLogger(__name__)


def sweep_leftovers(out_dir: Path, min_age_s: float = 3600.0) -> list[Path]:
    """Remove the writers' temporary files that a killed run left in ``out_dir`` (older than ``min_age_s``).

    Called under the folder's lock, so no batch is writing them; the age keeps
    clear of a ``run`` writing into the same folder at this moment.
    """
    removed = []
    now = time.time()
    for tmp in out_dir.glob(TMP_GLOB):
        try:
            if now - tmp.stat().st_mtime >= min_age_s:
                tmp.unlink()
                removed.append(tmp)
        except FileNotFoundError:
            continue
    if removed:
        log.warning("removed %d temporary file(s) left by an interrupted run in %s", len(removed), out_dir)
    return removed
