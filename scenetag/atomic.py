"""Atomic file output: write under a temporary name beside the target, rename when complete.

Every writer of a final output (GeoPackage, probability GeoTIFF, ONNX model)
goes through :func:`atomic_path`, so a killed job never leaves a half-written
file under the real name, only a hidden temporary one that :data:`TMP_GLOB`
matches.

Without ``replace``, the rename itself refuses an existing target
(:func:`publish`): checking first and renaming after would let two jobs that
checked at the same moment both succeed, one silently replacing the other.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import socket
import uuid
from pathlib import Path
from typing import Iterator

from scenetag.errors import OutputError, OutputExistsError

#: Matches the temporary files :func:`atomic_path` makes (and their sidecars).
TMP_GLOB = ".*.tmp.*"
#: The writer named in a temporary's name: ``.<name>.<pid>@<host>.<8 hex>.tmp<suffix>``.
_OWNER = re.compile(r"\.(?P<pid>\d+)@(?P<host>[^/@]+)\.[0-9a-f]{8}\.tmp")


def temporary_owner(tmp: str | os.PathLike) -> tuple[str, int] | None:
    """``(host, pid)`` of the process that made the temporary ``tmp`` (or its sidecar); None for other names."""
    m = _OWNER.search(Path(tmp).name)
    return (m["host"], int(m["pid"])) if m else None


def this_host() -> str:
    """This machine as :func:`temporary_owner` names it."""
    # Dots would blur the name's fields; the host is only compared, never resolved.
    return socket.gethostname().replace(".", "_").replace("/", "_") or "unknown"
#: Sidecars GDAL and SQLite may leave beside a file.
SIDECARS = ("-journal", "-wal", "-shm", ".aux.xml")


def temporary_name(out: Path) -> Path:
    """A hidden, unique name beside ``out`` with the same suffix (drivers pick formats by suffix).

    It names the writer (pid and host), so that the next run can tell a dead
    writer's leftover from a live writer's file (:func:`temporary_owner`).
    """
    return out.with_name(f".{out.name}.{os.getpid()}@{this_host()}.{uuid.uuid4().hex[:8]}.tmp{out.suffix}")


#: ``renameat2`` flag: fail with EEXIST rather than replace the target (Linux 3.15+, glibc 2.28+).
_RENAME_NOREPLACE = 1
_AT_FDCWD = -100
#: errnos that mean "this file system (or kernel) cannot do it", so the next way is tried.
_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV}


def _renameat2():
    """libc's ``renameat2``, or None where there is none (not Linux, old glibc, musl without it)."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn


_RENAMEAT2 = _renameat2()


def _exists_error(out: Path) -> OutputExistsError:
    return OutputExistsError(f"output {str(out)!r} exists (it appeared while this run worked) and is kept: "
                             "pass --overwrite to replace it")


def publish(tmp: Path, out: Path, replace: bool) -> None:
    """Give the finished ``tmp`` its final name ``out``; without ``replace``, never over an existing file.

    Without ``replace`` the check and the rename are one atomic step:
    ``renameat2(RENAME_NOREPLACE)`` where the kernel and file system have it,
    else a hard link (which fails if ``out`` exists) and the removal of
    ``tmp``.  Raises :class:`OutputExistsError` when ``out`` exists, and
    :class:`OutputError` where the file system can do neither.
    """
    if replace:
        os.replace(tmp, out)
        return
    if _RENAMEAT2 is not None:
        if _RENAMEAT2(_AT_FDCWD, os.fsencode(tmp), _AT_FDCWD, os.fsencode(out), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise _exists_error(out)
        if err not in _UNSUPPORTED:
            raise OSError(err, os.strerror(err), str(out))
    try:
        os.link(tmp, out)
    except FileExistsError:
        raise _exists_error(out) from None
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED:
            raise
        # Neither way exists here (e.g. a FAT or SMB share): a check-then-rename could replace a
        # file made meanwhile, which is exactly what is refused.
        raise OutputError(f"the file system of {str(out.parent)!r} cannot rename without replacing "
                          f"(neither renameat2 nor hard links work there: {exc.strerror}): pass --overwrite "
                          "to allow replacing, or write to another file system") from exc
    os.unlink(tmp)


@contextlib.contextmanager
def atomic_path(out: str | os.PathLike, *, replace: bool = False) -> Iterator[Path]:
    """A temporary path beside ``out``, given the name ``out`` if the block succeeds, removed otherwise.

    ``replace`` is the caller's overwrite decision: without it an ``out``
    that exists when the block ends is kept and :class:`OutputExistsError`
    raised (:func:`publish`), whoever made it meanwhile.
    """
    out = Path(out)
    tmp = temporary_name(out)
    try:
        yield tmp
        publish(tmp, out, replace)
    finally:
        discard(tmp)


def discard(tmp: str | os.PathLike) -> None:
    """Remove the temporary ``tmp`` and the sidecars GDAL and SQLite may have left beside it (if there)."""
    tmp = Path(tmp)
    for leftover in (tmp, *(Path(str(tmp) + s) for s in SIDECARS)):
        leftover.unlink(missing_ok=True)
