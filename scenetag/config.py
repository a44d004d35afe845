"""Settings read from the environment, in one place.

An explicit argument wins over the environment, which wins over the default.
"""

from __future__ import annotations

import os

#: GDAL block cache for chip reads, in MB.  Chips read each block once (mask, then
#: data straight after), so a small cache loses nothing, while GDAL's default (5% of
#: RAM) lets the cache grow with the scene: 1 GB of RSS on an 8192^2 scene here.
DEFAULT_GDAL_CACHEMAX_MB = 64

#: Chips a scene may have before the job refuses it (``--max-chips``, ``RunOptions.max_chips``):
#: a run this large is almost always a wrong stride (stride 1 on a 100 000 px scene is
#: ten billion chips), and would run for days.  Here, not in ``jobs``, so that the
#: command line's help shows it without importing the job.
DEFAULT_MAX_CHIPS = 10_000_000
#: How many times coarser than the model a scene may be for ``--resample`` without asking for
#: more (``--resample-max-factor``): 8x coarser is already 64x the chips.  Here for the same reason.
DEFAULT_RESAMPLE_MAX_FACTOR = 8.0


def gdal_cachemax_mb(explicit: int | None = None) -> int:
    """GDAL block cache size for reads: argument > ``GDAL_CACHEMAX`` (MB) > default."""
    if explicit is not None:
        return int(explicit)
    value = os.environ.get("GDAL_CACHEMAX", "").strip()
    if value.isdigit():
        return int(value)
    return DEFAULT_GDAL_CACHEMAX_MB


#: Seconds between two progress lines of ``batch`` in a log (no terminal, or ``--no-progress``).
DEFAULT_PROGRESS_INTERVAL_S = 30.0
#: Environment variable overriding it (cron logs that want more, or fewer, lines).
PROGRESS_INTERVAL_ENV = "SCENETAG_PROGRESS_INTERVAL"


def progress_interval_s(explicit: float | None = None) -> float:
    """Seconds between ``batch``'s progress log lines: argument > ``$SCENETAG_PROGRESS_INTERVAL`` > default.

    A value that is not a positive number is ignored (the default is used).
    """
    if explicit is not None:
        return float(explicit)
    try:
        value = float(os.environ.get(PROGRESS_INTERVAL_ENV, ""))
    except ValueError:
        return DEFAULT_PROGRESS_INTERVAL_S
    return value if value > 0 else DEFAULT_PROGRESS_INTERVAL_S
