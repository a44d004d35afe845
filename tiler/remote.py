"""What a server says about a remote scene, without reading its pixels: identity, listing, diagnosis.

:func:`object_stat`
    The object's ETag, size and last-modified time, from one small request
    (a ranged GET of the first bytes over HTTP, so that a URL signed for GET
    works; the store's metadata call for ``s3://``, ``gs://``, ``az://`` via
    fsspec).  The scene's identity in the signature comes from it
    (:func:`scenetag.hashing.scene_identity`): a re-run decides "up to date"
    without downloading the scene.
:func:`list_objects`
    The rasters under an object-storage prefix or glob (``s3://b/drop/``,
    ``s3://b/**/*.tif``), through fsspec: no listing code of our own.
:func:`diagnose`
    Why GDAL could not open a remote scene, as a one-line
    :class:`~scenetag.errors.RemoteSceneError` with the HTTP status or the
    network failure (refused, DNS, timeout, redirect loop, an HTML page).

Every message shows the location :func:`~scenetag.tiler.location.redact`-ed.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Sequence
from urllib.parse import urlsplit

from scenetag.errors import MissingDependencyError, RemoteSceneError
from scenetag.tiler.cloud import fsspec_options, http_timeout
from scenetag.tiler.location import fsspec_url, redact, redact_text, scheme

#: The bytes of a TIFF (and BigTIFF) file's start; what an HTML page is told apart by.
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
#: fsspec back ends by scheme, and the package that brings each (for the message when it is missing).
_FSSPEC_PACKAGES = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs", "abfss": "adlfs"}


@dataclass(frozen=True)
class ObjectStat:
    """What the server says identifies an object: its ETag, size and last-modified time (each where given)."""

    url: str
    size: int | None = None
    etag: str | None = None
    last_modified: str | None = None
    #: Other version markers the store gives (an S3 VersionId, a GCS generation).
    extra: dict = field(default_factory=dict)


def _host(url: str) -> str:
    return urlsplit(url).netloc.rsplit("@", 1)[-1] or url


def _http_error(shown: str, status: int, reason: str = "") -> RemoteSceneError:
    if status == 404 or status == 410:
        return RemoteSceneError(f"scene {shown!r} was not found (HTTP {status}): check the URL", status=status)
    if status in (401, 403):
        return RemoteSceneError(
            f"scene {shown!r}: access denied (HTTP {status}): check the credentials (AWS_ACCESS_KEY_ID..., "
            "AWS_PROFILE, or a signed URL that has not expired)", status=status)
    if 300 <= status < 400:
        return RemoteSceneError(f"scene {shown!r} redirects in a loop or too often (HTTP {status}): check the URL",
                                status=status, reason="redirects")
    if status == 429 or status >= 500:
        return RemoteSceneError(f"scene {shown!r}: the server answered HTTP {status}{' ' + reason if reason else ''}"
                                " (a temporary failure: try again later)", status=status)
    return RemoteSceneError(f"scene {shown!r}: the server answered HTTP {status}{' ' + reason if reason else ''}",
                            status=status)


def _network_error(shown: str, url: str, exc: BaseException) -> RemoteSceneError:
    """A failure to get an answer at all, by kind (refused, DNS, timeout, reset), as one line."""
    host = _host(url)
    cause = getattr(exc, "reason", exc)
    if isinstance(cause, socket.gaierror):
        return RemoteSceneError(f"scene {shown!r} cannot be reached: host {host!r} was not found (DNS): check "
                                "the host name", reason="dns")
    if isinstance(cause, ConnectionRefusedError):
        return RemoteSceneError(f"scene {shown!r} cannot be reached: {host} refused the connection (is the "
                                "server running, and the port right?)", reason="refused")
    if isinstance(cause, (TimeoutError, socket.timeout)):
        return RemoteSceneError(f"scene {shown!r}: no answer from {host} within {http_timeout():g} s (timeout): "
                                "try again later, or raise GDAL_HTTP_TIMEOUT", reason="timeout")
    if isinstance(cause, (ConnectionResetError, ConnectionAbortedError, http.client.RemoteDisconnected,
                          http.client.IncompleteRead)):
        return RemoteSceneError(f"scene {shown!r}: {host} dropped the connection ({type(cause).__name__})",
                                reason="reset")
    if isinstance(cause, ssl.SSLError):
        return RemoteSceneError(f"scene {shown!r}: TLS with {host} failed ({redact_text(str(cause))})",
                                reason="tls")
    return RemoteSceneError(f"scene {shown!r} cannot be reached ({redact_text(str(cause)) or type(cause).__name__})",
                            reason="network")


def gdal_http_headers() -> dict[str, str]:
    """The HTTP headers GDAL sends from the environment (``GDAL_HTTP_HEADERS``, ``GDAL_HTTP_BEARER`` with
    ``GDAL_HTTP_AUTH=BEARER``, ``GDAL_HTTP_USERPWD``), so that the identity request is authorised as GDAL's reads are."""
    import base64
    import os

    headers: dict[str, str] = {}
    for line in os.environ.get("GDAL_HTTP_HEADERS", "").replace("\r", "").replace("\n", ",").split(","):
        key, sep, value = line.partition(":")
        if sep and key.strip():
            headers[key.strip()] = value.strip()
    if os.environ.get("GDAL_HTTP_BEARER") and os.environ.get("GDAL_HTTP_AUTH", "").upper() == "BEARER":
        headers["Authorization"] = f"Bearer {os.environ['GDAL_HTTP_BEARER']}"
    elif os.environ.get("GDAL_HTTP_USERPWD"):
        token = base64.b64encode(os.environ["GDAL_HTTP_USERPWD"].encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    return headers


def _http_stat(location: str, url: str) -> ObjectStat:
    """ETag, size and last-modified of an HTTP object from a GET of its first bytes; refuses an HTML page."""
    shown = redact(location)
    request = urllib.request.Request(url, headers={**gdal_http_headers(), "Range": "bytes=0-15",
                                                   "User-Agent": "scenetag"})
    try:
        with urllib.request.urlopen(request, timeout=http_timeout()) as resp:
            head = resp.read(16)  # a server that ignores Range: the rest is never read
            headers = resp.headers
    except urllib.error.HTTPError as exc:
        raise _http_error(shown, exc.code, exc.reason if isinstance(exc.reason, str) else "") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise _network_error(shown, url, exc) from None
    content_type = (headers.get("Content-Type") or "").lower()
    if "html" in content_type or head.lstrip()[:1] == b"<":
        raise RemoteSceneError(f"scene {shown!r} is an HTML page, not a raster (a login or error page?): check "
                               "the URL and the credentials", reason="html")
    size = None
    content_range = headers.get("Content-Range") or ""
    if "/" in content_range and content_range.rsplit("/", 1)[1].strip().isdigit():
        size = int(content_range.rsplit("/", 1)[1])
    elif headers.get("Content-Length", "").isdigit():
        size = int(headers["Content-Length"])
    return ObjectStat(url=redact(url), size=size, etag=headers.get("ETag"),
                      last_modified=headers.get("Last-Modified"),
                      extra={"tiff": head[:4] in _TIFF_MAGIC} if head else {})


def filesystem(url: str):
    """fsspec's file system for ``url`` and the path in it; a one-line error when its package is missing."""
    from scenetag.errors import require

    fsspec = require("fsspec", "remote")

    try:
        return fsspec.core.url_to_fs(url, **fsspec_options(url))
    except (ImportError, ValueError) as exc:
        package = _FSSPEC_PACKAGES.get(scheme(url), "the fsspec back end for it")
        raise MissingDependencyError(f"reading {redact(url)!r} needs {package}: pip install {package} "
                                     f"(or pip install 'scenetag[remote]')") from exc


def _store_error(shown: str, url: str, exc: BaseException) -> RemoteSceneError:
    if isinstance(exc, FileNotFoundError):
        return _http_error(shown, 404)
    if isinstance(exc, PermissionError):
        return _http_error(shown, 403)
    text = redact_text(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    lowered = text.lower()
    if "could not connect" in lowered or "connection refused" in lowered or isinstance(exc, ConnectionRefusedError):
        return RemoteSceneError(f"scene {shown!r} cannot be reached: {text} (is the endpoint right? AWS_S3_ENDPOINT "
                                "or AWS_ENDPOINT_URL)", reason="refused")
    if "timeout" in lowered or "timed out" in lowered or isinstance(exc, TimeoutError):
        return RemoteSceneError(f"scene {shown!r}: no answer in time ({text})", reason="timeout")
    return RemoteSceneError(f"scene {shown!r} cannot be read from its store ({text})", reason="network")


def _store_stat(location: str, url: str) -> ObjectStat:
    fs, path = filesystem(url)
    shown = redact(location)
    try:
        info = fs.info(path)
    except Exception as exc:  # each back end raises its own (botocore, aiohttp, google.auth...)
        raise _store_error(shown, url, exc) from None
    if info.get("type") == "directory":
        raise RemoteSceneError(f"scene {shown!r} is a folder (a prefix): give an object, or pass it to batch",
                               status=None, reason="folder")
    etag = info.get("ETag") or info.get("etag") or info.get("md5Hash")
    modified = info.get("LastModified") or info.get("last_modified") or info.get("updated") or info.get("mtime")
    extra = {k: str(info[k]) for k in ("VersionId", "generation", "version_id") if info.get(k)}
    return ObjectStat(url=redact(url), size=info.get("size"), etag=str(etag) if etag else None,
                      last_modified=str(modified) if modified else None, extra=extra)


def object_stat(location: str) -> ObjectStat | None:
    """What the server says identifies the object at ``location``; None for a GDAL path with no plain URL.

    Raises :class:`~scenetag.errors.RemoteSceneError` (not found, access
    denied, unreachable, an HTML page) with the status or the failure kind.
    """
    url = fsspec_url(location)
    if url is None:
        return None
    if scheme(url) in ("http", "https"):
        return _http_stat(location, url)
    return _store_stat(location, url)


def diagnose(location: str, gdal_message: str) -> RemoteSceneError:
    """Why GDAL could not open ``location``: the server's answer to a small request, as one line.

    Where the server answers well (the object is there, and a TIFF), GDAL's own
    message is what is left to say.
    """
    shown = redact(location)
    detail = redact_text(gdal_message)
    try:
        stat = object_stat(location)
    except RemoteSceneError as exc:
        return exc
    except MissingDependencyError:
        stat = None
    if stat is not None and stat.extra.get("tiff") is False:
        return RemoteSceneError(f"scene {shown!r} is not a raster GDAL can read ({detail})", reason="format")
    return RemoteSceneError(f"scene {shown!r} could not be opened ({detail})", reason="gdal")


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def list_objects(url: str, suffixes: Sequence[str]) -> list[str]:
    """The objects under a prefix (``s3://b/drop/``: not recursively) or matching a glob (``**`` recurses).

    Only objects whose names end in one of ``suffixes`` are kept from a prefix;
    a glob keeps every object it matches.  Sorted, as full URLs.
    """
    fs, path = filesystem(url)
    shown = redact(url)
    try:
        if _is_glob(path):
            found = fs.glob(path, detail=True)
            keep = [p for p, info in found.items() if info.get("type") != "directory"]
        else:
            entries = fs.ls(path, detail=True)
            keep = [e["name"] for e in entries if e.get("type") != "directory"
                    and e["name"].lower().endswith(tuple(s.lower() for s in suffixes))]
    except Exception as exc:  # each back end raises its own
        raise _store_error(shown, url, exc) from None
    return sorted(fs.unstrip_protocol(p) for p in keep)


def is_folder(url: str) -> bool:
    """Whether an object-storage ``url`` is a prefix with objects under it (ends in ``/``, or no object has it)."""
    if url.endswith("/"):
        return True
    fs, path = filesystem(url)
    try:
        return fs.isdir(path)
    except Exception:  # unreachable or forbidden: taken as an object, whose read then says why
        return False
