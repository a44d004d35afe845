"""Where a scene lives: a local file, a URL, object storage or a GDAL ``/vsi...`` path.

A scene location is a string, kept exactly as given: rasterio reads
``http(s)://``, ``s3://``, ``gs://``, ``az://`` and GDAL's own ``/vsicurl/``,
``/vsis3/``, ``/vsizip/``... paths itself (``s3://`` becomes ``/vsis3/``),
so nothing here rewrites a location for reading.  :class:`pathlib.Path`
never touches a remote location: it folds ``http://`` into ``http:/``.

What is shown (messages, logs, the report, the ``runs`` table) is
:func:`redact`-ed: a signed URL's query string (``X-Amz-Signature=...``,
``sig=...``, tokens) and a URL's ``user:password@`` are credentials, and are
never written anywhere.  :func:`redact_text` does the same inside any text
(an error from GDAL quotes the URL it failed on), and
:class:`RedactingFilter` applies it to every log record a handler emits.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import PurePosixPath
from urllib.parse import urlsplit, urlunsplit

#: A URL scheme at the start of a location: ``s3://``, ``https://``...
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
#: URLs inside free text (error messages): up to whitespace or a quote.
_URL_IN_TEXT = re.compile(r"""(?:/vsi[a-z0-9_]+/)?[A-Za-z][A-Za-z0-9+.\-]*://[^\s'"<>]+""")
#: GDAL's virtual file systems that read over a network (``/vsicurl/``, ``/vsis3/``...).
NETWORK_VSI = ("vsicurl", "vsis3", "vsigs", "vsiaz", "vsiadls", "vsioss", "vsiswift", "vsiwebhdfs", "vsihdfs")
#: fsspec's scheme for each GDAL network file system that maps one to one.
_VSI_TO_SCHEME = {"vsis3": "s3", "vsigs": "gs", "vsiaz": "az", "vsiadls": "abfs", "vsioss": "oss"}


def scheme(location: str | os.PathLike) -> str:
    """The location's URL scheme in lower case (``"s3"``, ``"https"``), or ``""`` for a path."""
    m = _SCHEME.match(str(location))
    return m.group(1).lower() if m else ""


def vsi_prefix(location: str | os.PathLike) -> str:
    """The GDAL virtual file system a ``/vsi.../`` location names (``"vsicurl"``), else ``""``."""
    text = str(location)
    if not text.startswith("/vsi"):
        return ""
    return text[1:].split("/", 1)[0].split("?", 1)[0]


def is_remote(location: str | os.PathLike) -> bool:
    """Whether ``location`` is read through GDAL's network or virtual file systems, not as a local file.

    URLs (any scheme but ``file://``) and ``/vsi...`` paths are; everything else is a local path.
    """
    if isinstance(location, os.PathLike):
        return False
    s = scheme(location)
    return (bool(s) and s != "file") or bool(vsi_prefix(location))


def is_network(location: str | os.PathLike) -> bool:
    """Whether reading ``location`` goes over a network (a URL, or a ``/vsicurl/``, ``/vsis3/``... path)."""
    if not is_remote(location):
        return False
    prefix = vsi_prefix(location)
    if prefix in NETWORK_VSI:
        return True
    if prefix:  # /vsizip/, /vsigzip/, /vsitar/: network when what they wrap is
        return is_network(_vsi_inner(str(location)))
    return True


def _vsi_inner(location: str) -> str:
    """What a ``/vsiXXX/`` path wraps (``/vsizip/s3://b/a.zip/x.tif`` → ``s3://b/a.zip/x.tif``)."""
    rest = location.split("/", 2)[2] if location.count("/") >= 2 else ""
    if rest.startswith("{"):  # /vsizip/{path with .zip inside}/member
        rest = rest[1:].split("}", 1)[0]
    return rest if _SCHEME.match(rest) or rest.startswith("/vsi") else "/" + rest


def fsspec_url(location: str) -> str | None:
    """The fsspec URL of a remote object (``/vsis3/b/k`` → ``s3://b/k``), or None where there is none.

    ``/vsicurl/URL`` is its URL; GDAL-only forms (``/vsicurl?url=``, ``/vsizip/``...) have none.
    """
    if scheme(location):
        return location
    prefix = vsi_prefix(location)
    if prefix == "vsicurl" and location.startswith("/vsicurl/"):
        return location[len("/vsicurl/"):]
    if prefix in _VSI_TO_SCHEME:
        return f"{_VSI_TO_SCHEME[prefix]}://{location[len(prefix) + 2:]}"
    return None


def _redact_url(url: str) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]  # user:password@host → host
    return urlunsplit((parts.scheme, netloc, parts.path, "", parts.fragment))


def redact(location: str | os.PathLike) -> str:
    """``location`` as it may be shown: no query string and no ``user:password@``; a local path unchanged.

    The query of a signed URL is its credential; a STAC item's ``#id`` fragment is kept.
    """
    text = str(location)
    if not is_remote(text):
        return text
    prefix = vsi_prefix(text)
    if prefix:
        head, _, rest = text[1:].partition("/")
        if "?" in head:  # /vsicurl?url=...&header=...: all of it is GDAL's options
            return f"/{head.split('?', 1)[0]}?…"
        return f"/{head}/{redact(rest) if _SCHEME.match(rest) else rest.split('?', 1)[0]}"
    return _redact_url(text)


def redact_text(text: str) -> str:
    """``text`` with every URL in it :func:`redact`-ed (for messages that quote GDAL's or a server's)."""
    def one(m: re.Match) -> str:
        url = m.group(0)
        tail = len(url) - len(url.rstrip(".,:;)]"))  # the sentence's punctuation, not the URL's
        return redact(url[:len(url) - tail]) + url[len(url) - tail:]

    return _URL_IN_TEXT.sub(one, text) if "://" in text else text


def scene_name(location: str | os.PathLike) -> str:
    """The name a scene's outputs take: the file's stem, or a STAC item's ``#id``.

    ``https://host/a/scene.tif?sig=...`` → ``scene``; ``s3://b/items/x.json#item-1`` → ``item-1``.
    """
    text = str(location)
    head, sep, fragment = text.rpartition("#")
    if sep and fragment and "/" not in fragment and head.split("?", 1)[0].lower().endswith((".json", ".geojson")):
        return fragment  # a STAC item of a file or URL
    if not is_remote(text):
        return PurePosixPath(text).stem if "/" in text else os.path.splitext(os.path.basename(text))[0]
    shown = redact(text)
    path, _, fragment = shown.partition("#")
    if fragment:
        return fragment
    if vsi_prefix(path) and "?" in path:
        return "scene"
    path = urlsplit(path).path if scheme(path) else path
    name = PurePosixPath(path.rstrip("/")).name
    return os.path.splitext(name)[0] or "scene"


def display_name(location: str | os.PathLike) -> str:
    """The last part of a location, for one-line summaries (``scene.tif``; a STAC item's id)."""
    text = redact(location)
    if is_remote(text):
        path, _, fragment = text.partition("#")
        return fragment or PurePosixPath(urlsplit(path).path if scheme(path) else path).name or text
    return PurePosixPath(text).name


class RedactingFilter(logging.Filter):
    """Redacts URLs in every record a handler emits: a signed URL's query never reaches a log."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "://" in message:
            record.msg, record.args = redact_text(message), None
        return True


def redact_logs(handler: logging.Handler) -> logging.Handler:
    """Add a :class:`RedactingFilter` to ``handler`` (once); returns it."""
    if not any(isinstance(f, RedactingFilter) for f in handler.filters):
        handler.addFilter(RedactingFilter())
    return handler
