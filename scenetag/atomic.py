"""Atomic file output: write under a temporary name beside the target, rename when complete.

Every writer of a final output (GeoPackage, probability GeoTIFF, ONNX model)
goes through :func:`atomic_path`, so a killed job never leaves a half-written
file under the real name, only a hidden temporary one that :data:`TMP_GLOB`
matches.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Iterator

#: Matches the temporary files :func:`atomic_path` makes (and their sidecars).
TMP_GLOB = ".*.tmp.*"
#: Sidecars GDAL and SQLite may leave beside a file.
_SIDECARS = ("-journal", "-wal", "-shm", ".aux.xml")


def temporary_name(out: Path) -> Path:
    """A hidden, unique name beside ``out`` with the same suffix (drivers pick formats by suffix)."""
    return out.with_name(f".{out.name}.{uuid.uuid4().hex[:12]}.tmp{out.suffix}")


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
