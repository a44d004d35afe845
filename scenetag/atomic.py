"""Atomic file output: write under a temporary name beside the target, rename when complete.

Every writer of a final output (GeoPackage, probability GeoTIFF, ONNX model)
goes through :func:`atomic_path`, so a killed job never leaves a half-written
file under the real name, only a hidden temporary one that :data:`TMP_GLOB`
matches.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import uuid
from pathlib import Path
from typing import Iterator

#: Matches the temporary files :func:`atomic_path` makes (and their sidecars).
TMP_GLOB = ".*.tmp.*"
#: The writer named in a temporary's name: ``.<name>.<pid>@<host>.<8 hex>.tmp<suffix>``.
_OWNER = re.compile(r"\.(?P<pid>\d+)@(?P<host>[^/@]+)\.[0-9a-f]{8}\.tmp")


def _host() -> str:
    # Dots would blur the name's fields; the host is only compared, never resolved.
    return socket.gethostname().replace(".", "_").replace("/", "_") or "unknown"


def temporary_owner(tmp: str | os.PathLike) -> tuple[str, int] | None:
    """``(host, pid)`` of the process that made the temporary ``tmp`` (or its sidecar); None for other names."""
    m = _OWNER.search(Path(tmp).name)
    return (m["host"], int(m["pid"])) if m else None


def this_host() -> str:
    """This machine as :func:`temporary_owner` names it."""
    return _host()
#: Sidecars GDAL and SQLite may leave beside a file.
_SIDECARS = ("-journal", "-wal", "-shm", ".aux.xml")


def temporary_name(out: Path) -> Path:
    """A hidden, unique name beside ``out`` with the same suffix (drivers pick formats by suffix).

    It names the writer (pid and host), so that the next run can tell a dead
    writer's leftover from a live writer's file (:func:`temporary_owner`).
    """
    return out.with_name(f".{out.name}.{os.getpid()}@{_host()}.{uuid.uuid4().hex[:8]}.tmp{out.suffix}")


@contextlib.contextmanager
def atomic_path(out: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``out``, renamed to ``out`` if the block succeeds, removed otherwise."""
    out = Path(out)
    tmp = temporary_name(out)
    try:
        yield tmp
        os.replace(tmp, out)
    finally:
        for leftover in (tmp, *(Path(str(tmp) + s) for s in _SIDECARS)):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
