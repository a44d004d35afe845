"""glibc malloc settings for eager torch on the CPU: freed activations stay in the heap for the next batch.

Eager torch allocates every activation of a forward pass afresh.  glibc serves
blocks above its mmap threshold (128 KiB, rising to at most 32 MiB as such
blocks are freed) with ``mmap`` and hands them back with ``munmap`` on free,
and trims the top of the heap above 128 KiB: so each batch maps, faults in
(zeroes) and unmaps tens of MiB again, page by page.  With the thresholds out
of reach the heap keeps the memory and the next batch reuses it without a page
fault; running with ``MALLOC_MMAP_THRESHOLD_=17179869184
MALLOC_TRIM_THRESHOLD_=17179869184`` doubled eager torch throughput on this
2-core machine (docs/performance.md, "Torch on the CPU").

:func:`keep_freed_memory` sets the same from inside the process with
``mallopt`` (whose value is a C ``int``, so 2 GiB rather than 16), once, on
glibc only, and not where the user set either variable.  The cost: the
process keeps its peak heap instead of giving it back to the system.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger(__name__)

#: mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: The largest value mallopt takes (an int): blocks up to 2 GiB come from the heap, which is not trimmed below it.
THRESHOLD = 2**31 - 1
#: Environment variables that set the same thresholds (glibc reads them at start-up).
ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")

_done: bool | None = None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once); whether they are raised now.

    Does nothing off glibc (musl, macOS, Windows), or where the user set
    ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_`` (their choice stands).
    """
    global _done
    if _done is not None:
        return _done
    _done = False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(name in os.environ for name in ENV):
        log.debug("malloc thresholds left as %s set them", "/".join(n for n in ENV if n in os.environ))
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = all(libc.mallopt(ctypes.c_int(param), ctypes.c_int(THRESHOLD)) == 1
                 for param in (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD))
    except (OSError, AttributeError) as exc:
        log.debug("could not set malloc thresholds: %s", exc)
        return False
    _done = bool(ok)
    if _done:
        log.debug("glibc mmap/trim thresholds raised to %d bytes (eager torch reuses freed activations)", THRESHOLD)
    return _done
