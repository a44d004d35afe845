"""GDAL's settings for reading scenes over a network, in one place: :func:`gdal_env`.

Every GDAL read of the job (opening and describing the scene, the stretch
sample, the chip readers in threads and in processes) runs inside
:func:`gdal_env`.  Each option below is a default: one that the environment
sets (``GDAL_HTTP_TIMEOUT=5 scenetag run ...``) wins, as GDAL's own rule
is.  Why each is set is said beside it, and in ``docs/remote.md``.

Credentials and endpoints are never options here: GDAL reads them from the
environment itself (``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``,
``GOOGLE_APPLICATION_CREDENTIALS``, ``AZURE_STORAGE_CONNECTION_STRING``...),
as boto and fsspec do.  The one bridge is the S3 endpoint, which GDAL and
boto name differently (:func:`s3_endpoint_options`, :func:`fsspec_options`),
so that one setting serves both.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import rasterio

from scenetag.config import gdal_cachemax_mb

#: GDAL options for network reads, each a default that the environment may override.
CLOUD_OPTIONS: dict[str, str] = {
    # Opening a file lists its folder to look for sidecars (.ovr, .aux.xml, .msk); on a bucket that is a
    # LIST request per scene (slow, and often forbidden), over HTTP a directory page.  Scenes carry
    # their overviews and masks inside (COG), so nothing is lost.
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    # The first request takes the TIFF header and its tile index (offsets and sizes) together,
    # instead of a few small requests one after the other at every open.
    "GDAL_INGESTED_BYTES_AT_OPEN": "32768",
    # A run of neighbouring tiles (one chip row) in one ranged request instead of one per tile.
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    # HTTP/2 multiplexing where the server speaks it: the reader threads share one connection.
    "GDAL_HTTP_MULTIPLEX": "YES",
    # Each open file keeps what it fetched (bounded, per handle): the mask read and the data read of
    # a chip come from one fetch.
    "VSI_CACHE": "TRUE",
    "VSI_CACHE_SIZE": str(16 << 20),
    # The process-wide cache of fetched blocks, bounded (GDAL's default is 16 MB).
    "CPL_VSIL_CURL_CACHE_SIZE": str(64 << 20),
    # 429 and 5xx answers are retried by GDAL inside a read, with a growing delay, before the read fails.
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "1",
    # A server that accepts and never answers fails the read (and the scene) instead of hanging the job.
    "GDAL_HTTP_CONNECTTIMEOUT": "10",
    "GDAL_HTTP_TIMEOUT": "60",
}

#: Suffixes GDAL may assume a remote file has (``CPL_VSIL_CURL_ALLOWED_EXTENSIONS``); NOT set by default:
#: signed URLs and STAC hrefs often have no suffix, and GDAL would then refuse them as missing.
#: ``EMPTY_DIR`` already stops the sidecar requests that this option is usually set to prevent.
ALLOWED_EXTENSIONS_HINT = ".tif,.tiff,.vrt"


def http_timeout() -> float:
    """Seconds a request may take: ``GDAL_HTTP_TIMEOUT`` from the environment, else the default above."""
    try:
        return float(os.environ.get("GDAL_HTTP_TIMEOUT", CLOUD_OPTIONS["GDAL_HTTP_TIMEOUT"]))
    except ValueError:
        return float(CLOUD_OPTIONS["GDAL_HTTP_TIMEOUT"])


def s3_endpoint_options() -> dict[str, str]:
    """GDAL's S3 endpoint options from boto's ``AWS_ENDPOINT_URL(_S3)``, where GDAL's own are not set.

    ``AWS_ENDPOINT_URL=http://127.0.0.1:9000`` → ``AWS_S3_ENDPOINT=127.0.0.1:9000``,
    ``AWS_HTTPS=NO``, ``AWS_VIRTUAL_HOSTING=FALSE`` (a custom endpoint is path-style).
    """
    url = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not url or "AWS_S3_ENDPOINT" in os.environ:
        return {}
    parts = urlsplit(url if "://" in url else f"https://{url}")
    out = {"AWS_S3_ENDPOINT": parts.netloc, "AWS_HTTPS": "NO" if parts.scheme == "http" else "YES"}
    out.setdefault("AWS_VIRTUAL_HOSTING", os.environ.get("AWS_VIRTUAL_HOSTING", "FALSE"))
    return out


def gdal_options(cachemax_mb: int | None = None) -> dict[str, str | int]:
    """The options :func:`gdal_env` sets: the block cache, and the cloud defaults the environment leaves unset."""
    options: dict[str, str | int] = {"GDAL_CACHEMAX": gdal_cachemax_mb(cachemax_mb)}
    options.update({k: v for k, v in CLOUD_OPTIONS.items() if k not in os.environ})
    options.update(s3_endpoint_options())
    return options


def gdal_env(cachemax_mb: int | None = None) -> rasterio.Env:
    """A :class:`rasterio.Env` with :func:`gdal_options` (the one place GDAL is configured for reads)."""
    return rasterio.Env(**gdal_options(cachemax_mb))


def fsspec_options(url: str) -> dict:
    """fsspec storage options for ``url``: for ``s3://``, GDAL's ``AWS_S3_ENDPOINT`` where boto's is unset.

    Everything else (credentials, regions, profiles) fsspec's back ends take
    from the environment themselves.
    """
    if not url.startswith("s3://"):
        return {}
    if os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"):
        return {}
    endpoint = os.environ.get("AWS_S3_ENDPOINT")
    if not endpoint:
        return {}
    if "://" not in endpoint:
        https = os.environ.get("AWS_HTTPS", "YES").upper() not in ("NO", "FALSE", "OFF", "0")
        endpoint = f"{'https' if https else 'http'}://{endpoint}"
    return {"client_kwargs": {"endpoint_url": endpoint}}
