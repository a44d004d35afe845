"""SQLite connections to a GeoPackage, for the modules that read or amend it beside GDAL."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path


def file_uri(path: str | os.PathLike, mode: str = "ro") -> str:
    """An SQLite ``file:`` URI of ``path`` opened in ``mode``, with ``#``, ``?`` and ``%`` in names escaped."""
    return f"{Path(path).absolute().as_uri()}?mode={mode}"


def connect_read_only(path: str | os.PathLike) -> sqlite3.Connection:
    """A read-only connection to the GeoPackage at ``path``, which must exist (none is created)."""
    return sqlite3.connect(file_uri(path, "ro"), uri=True)
