"""What a failed write of an output means: this output can't be written, or the disk is full.

The writers (:mod:`~scenetag.outputs_schema.geopackage`,
:mod:`~scenetag.outputs_schema.raster`) turn whatever their library raised
into one of these, so a full disk reads the same whichever layer or file met it.
"""

from __future__ import annotations

import errno
import os

from scenetag.errors import DiskFullError, OutputError, chain

#: OS error numbers of a full disk or an exhausted quota.
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
#: Below this much free space, a write that failed failed for want of room (pyogrio may say only
#: "Failed to commit transaction").
_NEARLY_FULL_BYTES = 256 * 1024
#: How SQLite, GDAL and pyogrio say so where no OS error number comes with it.
_FULL_TEXTS = ("disk is full", "no space left", "disk quota exceeded")


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or one of its causes) says that the disk or the quota is full."""
    return any((isinstance(e, OSError) and e.errno in _FULL_ERRNOS)
               or any(text in str(e).lower() for text in _FULL_TEXTS) for e in chain(exc))


def _nearly_full(path: str | os.PathLike) -> bool:
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < _NEARLY_FULL_BYTES


def write_error(out: str | os.PathLike, exc: BaseException, tmp: str | os.PathLike | None = None) -> OutputError:
    """The error to raise for ``exc`` met while writing ``out``: :class:`DiskFullError` or :class:`OutputError`.

    ``tmp``, the temporary being written (still there), lets a failure that
    says nothing of room be judged by the room left beside it.
    """
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    folder = os.path.dirname(os.path.abspath(out))
    if is_disk_full(exc) or (tmp is not None and os.path.exists(tmp) and _nearly_full(folder)):
        return DiskFullError(f"could not write {str(out)!r}: the disk holding {folder!r} is full ({first}); "
                             "its partial file was removed: make room, or write elsewhere with --out")
    return OutputError(f"could not write {str(out)!r}: {first}")
