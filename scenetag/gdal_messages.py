"""GDAL's and PROJ's messages through logging, each once.

rasterio sends GDAL's (and, through GDAL, PROJ's) messages to the
``rasterio._env`` logger, but only while a rasterio environment is active in
the calling thread: its error handler is pushed on GDAL's *thread-local*
handler stack when an ``Env`` is entered.  Outside one, GDAL's default
handler prints a raw ``Warning 1: ...`` or ``ERROR 1: PROJ: ...`` line on
stderr, past logging and ``-q``.  That happens to a dataset opened in one
call and read in later ones (a chip reader's handle, read by its thread after
``rasterio.open`` has left its environment) and to a CRS parsed outside any
environment (``--to-crs``).  Those places enter an environment
(:func:`rasterio.env.env_ctx_if_needed`, :func:`gdal_errors_raised`).

Once routed, one fault still arrives several times: GDAL reports a TIFF
directory warning when the file is opened (prefixed with the file's name)
and again when its first block is read (without it), and again for each
handle a reader thread or process opens.  :class:`OnceFilter` lets through
the first of each message per file, and drops the repeats.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from typing import Iterator

#: The logger rasterio sends GDAL's messages to.
GDAL_LOGGER = "rasterio._env"

#: ``"CPLE_AppDefined in <message>"``, as rasterio formats a GDAL message.
_CPLE_PREFIX = re.compile(r"^CPLE_\w+ in ")
#: ``"<file name>: <message>"``, as GDAL prefixes a driver's message about a file.
_FILE_PREFIX = re.compile(r"^(?P<file>[^\s:]+\.\w+): (?P<text>.*)$", re.S)
#: Messages remembered at most (a long batch meets many files): past this, the memory starts over.
_MAX_SEEN = 10_000

_local = threading.local()


class OnceFilter(logging.Filter):
    """Drop GDAL messages already logged (for the same file), and those of a call whose error is raised.

    A message that names its file (``"scene.tif: TIFFReadDirectory: ..."``)
    passes once per file; one that names none passes only if no message of
    that text has passed before, whatever its file.
    """

    def __init__(self) -> None:
        super().__init__("scenetag.gdal_once")
        self._seen: set[tuple[str, str]] = set()
        self._texts: set[str] = set()
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(_local, "muted", 0):
            return False
        message = _CPLE_PREFIX.sub("", record.getMessage(), count=1)
        named = _FILE_PREFIX.match(message)
        file, text = (named["file"], named["text"]) if named else ("", message)
        with self._lock:
            if len(self._seen) > _MAX_SEEN:
                self._seen.clear()
                self._texts.clear()
            if (file, text) in self._seen or (not file and text in self._texts):
                return False
            self._seen.add((file, text))
            self._texts.add(text)
        return True


def route_gdal_messages() -> None:
    """Put the :class:`OnceFilter` on rasterio's GDAL logger (once; calling again does nothing)."""
    logger = logging.getLogger(GDAL_LOGGER)
    if not any(isinstance(f, OnceFilter) for f in logger.filters):
        logger.addFilter(OnceFilter())


@contextlib.contextmanager
def gdal_errors_raised() -> Iterator[None]:
    """Run a GDAL call whose failure is raised as an exception carrying GDAL's message.

    Within the block a rasterio environment is active in this thread (so
    nothing is printed raw) and GDAL's messages are not logged (the exception
    says them, once).
    """
    from rasterio.env import env_ctx_if_needed

    _local.muted = getattr(_local, "muted", 0) + 1
    try:
        with env_ctx_if_needed():
            yield
    finally:
        _local.muted -= 1
