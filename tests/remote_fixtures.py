"""Real servers on 127.0.0.1 for the remote-scene tests: an HTTP server with Range support, and moto's S3.

Nothing is mocked: GDAL, urllib, pystac and s3fs talk to these servers over
loopback sockets, as they would to a CDN or a bucket.

:class:`SceneServer`
    A threaded HTTP server over a folder: GET and HEAD, single byte ranges
    (206, ``Content-Range``), ``ETag`` and ``Last-Modified`` from the file,
    and counts of the requests and bytes it served.  A few paths misbehave
    on purpose: ``/html/...`` answers an HTML page, ``/status/CODE/...``
    that status, ``/loop/...`` a redirect to itself, ``/slow/...`` nothing
    for a while, ``/auth/FILE`` serves FILE only with ``Authorization: Bearer good-token``.
:func:`moto_server`
    moto's S3 server, and the environment GDAL and s3fs need to use it.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import SCENES


@dataclass
class Served:
    """What the server sent: requests and body bytes, per path and in all."""

    requests: int = 0
    bytes: int = 0
    by_path: dict = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, path: str, n: int) -> None:
        with self.lock:
            self.requests += 1
            self.bytes += n
            req, nbytes = self.by_path.get(path, (0, 0))
            self.by_path[path] = (req + 1, nbytes + n)

    def reset(self) -> None:
        with self.lock:
            self.requests, self.bytes, self.by_path = 0, 0, {}


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"  # keep-alive, as GDAL's curl expects of a real server

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False,
              length: int | None = None, count: bool = True) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if not head:
            self.wfile.write(body)
        if count:
            self.server.served.add(self.path.split("?", 1)[0], 0 if head else len(body))

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _serve(self, head: bool) -> None:
        path = self.path.split("?", 1)[0]
        parts = path.strip("/").split("/")
        served = self.server.served
        if parts[0] == "__served":  # the counts, for the test (not counted themselves)
            with served.lock:
                body = json.dumps({"requests": served.requests, "bytes": served.bytes,
                                   "by_path": served.by_path}).encode()
            return self._send(200, body, {"Content-Type": "application/json"}, count=False)
        if parts[0] == "__reset":
            served.reset()
            return self._send(200, b"", count=False)
        if parts[0] == "auth":  # the rest of the path is a file, served only with the right bearer token
            if self.headers.get("Authorization") != "Bearer good-token":
                return self._send(401, b"no", {"Content-Type": "text/plain"}, head)
            parts = parts[1:]
        if parts[0] == "html":
            return self._send(200, b"<!doctype html><html><body>Please log in</body></html>",
                              {"Content-Type": "text/html; charset=utf-8"}, head)
        if parts[0] == "status":
            return self._send(int(parts[1]), b"no", {"Content-Type": "text/plain"}, head)
        if parts[0] == "loop":
            return self._send(302, b"", {"Location": self.path}, head)
        if parts[0] == "slow":
            time.sleep(self.server.slow_seconds)
            return self._send(503, b"late", {"Content-Type": "text/plain"}, head)
        file = (self.server.root / "/".join(parts)).resolve()
        if self.server.root not in file.parents or not file.is_file():
            return self._send(404, b"not found", {"Content-Type": "text/plain"}, head)
        data = file.read_bytes()
        st = file.stat()
        headers = {"Content-Type": "application/json" if file.suffix == ".json" else "image/tiff",
                   "Accept-Ranges": "bytes", "ETag": f'"{st.st_mtime_ns:x}-{st.st_size:x}"',
                   "Last-Modified": email.utils.formatdate(st.st_mtime, usegmt=True)}
        rng = self.headers.get("Range", "")
        if rng.startswith("bytes=") and "," not in rng:
            a, _, b = rng[6:].partition("-")
            start = int(a) if a else max(0, len(data) - int(b))
            end = min(len(data) - 1, int(b)) if a and b else len(data) - 1
            if start >= len(data):
                return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"}, head)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return self._send(206, data[start:end + 1], headers, head)
        return self._send(200, data, headers, head, length=len(data))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    root: Path
    served: Served
    slow_seconds: float = 3.0


def _serve(root: str, conn) -> None:
    """The server process: serve ``root`` on a free loopback port, sent back through ``conn``."""
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.root = Path(root).resolve()
    httpd.served = Served()
    conn.send(httpd.server_address[1])
    httpd.serve_forever()


class SceneServer:
    """An HTTP server over ``root`` in its own process; ``url(name)`` is a file's URL.

    Its own process, not a thread of the test's: GDAL holds Python's GIL in some
    calls that read the network (the mask flags of a file with an internal mask),
    and a server thread in the same process could then never answer.
    """

    def __init__(self, root: Path) -> None:
        import multiprocessing

        self.root = Path(root).resolve()
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(str(self.root), child), name="scene-server", daemon=True)
        self.port = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    @property
    def served(self) -> Served:
        """What the server sent so far."""
        import urllib.request

        with urllib.request.urlopen(f"{self.base}/__served", timeout=10) as resp:
            d = json.loads(resp.read())
        return Served(d["requests"], d["bytes"], {k: tuple(v) for k, v in d["by_path"].items()})

    def reset(self) -> None:
        """Zero the counts."""
        import urllib.request

        urllib.request.urlopen(f"{self.base}/__reset", timeout=10).close()

    def __enter__(self) -> "SceneServer":
        self.process.start()
        if not self._conn.poll(60):
            self.process.kill()
            raise RuntimeError("the test HTTP server did not start")
        self.port = self._conn.recv()
        return self

    def __exit__(self, *exc) -> None:
        self.process.kill()
        self.process.join(5)


@contextlib.contextmanager
def scene_server(root: Path) -> Iterator[SceneServer]:
    """A :class:`SceneServer` over ``root``, stopped after."""
    with SceneServer(root) as server:
        yield server


def scenes_or_skip() -> Path:
    """The shared real scenes folder, or skip saying why."""
    if not SCENES.is_dir():
        pytest.skip(f"real scenes {SCENES} are absent (shared data not laid beside the project)")
    return SCENES


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed): connections to it are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: Environment a loopback S3 endpoint needs: GDAL's names (s3fs takes them too, see tiler.cloud).
def s3_environment(host: str, port: int) -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1", "AWS_S3_ENDPOINT": f"{host}:{port}", "AWS_HTTPS": "NO",
            "AWS_VIRTUAL_HOSTING": "FALSE"}


#: Variables that would point GDAL or boto elsewhere than the loopback server.
S3_UNSET = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_NO_SIGN_REQUEST",
            "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")


@contextlib.contextmanager
def moto_server() -> Iterator[tuple[str, int]]:
    """moto's S3 server on a free loopback port, in its own process: yields ``(host, port)``, stopped after.

    ``python -m moto.server`` rather than ``ThreadedMotoServer``: a server thread
    in the test's process could not answer while GDAL holds the GIL (see :class:`SceneServer`).
    """
    import subprocess
    import sys
    import urllib.request

    port = closed_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def up() -> bool:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1).close()
                return True
            except OSError:
                return proc.poll() is not None
        if not wait_for(up, 60) or proc.poll() is not None:
            raise RuntimeError("moto's S3 server did not start")
        yield "127.0.0.1", port
    finally:
        proc.kill()
        proc.wait(10)


def s3_client(host: str, port: int):
    """A boto3 S3 client of the moto server (to make buckets and put objects)."""
    import boto3

    return boto3.client("s3", endpoint_url=f"http://{host}:{port}", aws_access_key_id="testing",
                        aws_secret_access_key="testing", region_name="us-east-1")


def set_env(monkeypatch, values: dict[str, str], unset: tuple[str, ...] = ()) -> None:
    """Set ``values`` in the environment and unset ``unset``, for one test (monkeypatch restores them)."""
    for k in unset:
        monkeypatch.delenv(k, raising=False)
    for k, v in values.items():
        monkeypatch.setenv(k, v)


def stac_item(path: Path, item_id: str, assets: dict, *, collection: str | None = "test-collection",
              updated: str | None = None, bands: dict | None = None, when: str = "2024-05-01T10:00:00Z") -> Path:
    """Write a STAC item with pystac: ``assets`` key → href; ``bands`` key → common names (eo:bands)."""
    from datetime import datetime

    import pystac
    from pystac.extensions.eo import Band, EOExtension

    item = pystac.Item(id=item_id, geometry={"type": "Point", "coordinates": [0.0, 0.0]}, bbox=[0, 0, 0, 0],
                       datetime=datetime.fromisoformat(when.replace("Z", "+00:00")), properties={},
                       collection=collection)
    if updated:
        item.properties["updated"] = updated
    for key, href in assets.items():
        roles = ["thumbnail"] if key == "thumbnail" else ["data"]
        media = pystac.MediaType.PNG if key == "thumbnail" else pystac.MediaType.COG
        item.add_asset(key, pystac.Asset(href=href, media_type=media, roles=roles))
    if bands:
        EOExtension.add_to(item)
        for key, names in bands.items():
            EOExtension.ext(item.assets[key]).bands = [Band.create(name=n, common_name=n) for n in names]
    if collection is None:
        item.collection_id = None
    path.parent.mkdir(parents=True, exist_ok=True)
    item.save_object(include_self_link=False, dest_href=str(path))
    return path


def wait_for(predicate, timeout: float = 5.0) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds pass."""
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def env_without(*names: str) -> dict[str, str]:
    """A copy of the environment without ``names`` (for subprocesses)."""
    return {k: v for k, v in os.environ.items() if k not in names}


def chips(path):
    """The ``chips`` layer of a GeoPackage, as a GeoDataFrame."""
    import pyogrio

    return pyogrio.read_dataframe(path, layer="chips")


def runs(path) -> dict:
    """The last row of a GeoPackage's ``runs`` table, as a dict."""
    import sqlite3

    con = sqlite3.connect(path)
    con.row_factory = sqlite3.Row
    try:
        return dict(con.execute("SELECT * FROM runs ORDER BY rowid DESC LIMIT 1").fetchone())
    finally:
        con.close()


@pytest.fixture(scope="module")
def server():
    """The loopback scene server over the real scenes (module-wide): import it into a test module to use it."""
    with scene_server(scenes_or_skip()) as s:
        yield s
