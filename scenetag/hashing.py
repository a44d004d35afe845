"""Checksums of files and identities of scenes, for provenance (scenes and models alike).

A scene's identity is what its outputs' signature holds for "this scene": for
a local file the sha256 of its bytes; for a remote one what the server says
about the object (ETag, size, last-modified: :func:`scenetag.tiler.remote.object_stat`),
so that deciding whether an output is up to date never downloads the scene;
for a STAC item its id and ``updated`` time or the asset's checksum
(:func:`scenetag.jobs.stac.stac_identity`).  :attr:`SceneIdentity.kind` says
which, and the ``runs`` table records it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def model_sha256(path: str | os.PathLike, data: bytes | None = None) -> str:
    """Hex sha256 of a model: of ``data`` where its bytes are in memory (shipped to a worker), else of the file."""
    return hashlib.sha256(data).hexdigest() if data is not None else file_sha256(path)


#: Identity kinds: the file's bytes; the server's ETag; its size and last-modified time (no ETag);
#: a STAC item's id and update time or checksum; the location alone (nothing better was said).
SHA256, ETAG, SIZE_MTIME, STAC, LOCATION = "sha256", "etag", "size+last-modified", "stac", "location"


@dataclass(frozen=True)
class SceneIdentity:
    """What identifies a scene in a signature: ``digest`` (a hex sha256), from ``kind`` of evidence ``detail``."""

    kind: str
    digest: str
    #: What the digest was made from (ETag, size, last-modified, item id...), as recorded in ``runs``.
    detail: dict = field(default_factory=dict, compare=False)

    @classmethod
    def of(cls, kind: str, detail: dict) -> "SceneIdentity":
        """The identity of ``kind`` made from ``detail`` (its digest: sha256 of the canonical JSON)."""
        payload = json.dumps({"kind": kind, **detail}, sort_keys=True, default=str)
        return cls(kind, hashlib.sha256(payload.encode()).hexdigest(), dict(detail))

    def to_dict(self) -> dict:
        """As the ``runs.scene_identity`` field holds it."""
        return {"kind": self.kind, "digest": self.digest, **self.detail}


def scene_identity(location: str | os.PathLike) -> SceneIdentity:
    """The identity of the scene at ``location``: the sha256 of a local file, the server's word for a remote one.

    Remote: the ETag (with the size) where the server gives one, else size and
    last-modified; the location alone for a GDAL path that names no plain
    object (``/vsizip/`` of a remote archive is identified by that archive).
    Raises ``OSError`` for a local file that cannot be read and
    :class:`~scenetag.errors.RemoteSceneError` for a remote one.
    """
    from scenetag.tiler.location import is_remote, redact, vsi_prefix, _vsi_inner

    text = str(location)
    if not is_remote(text):
        return SceneIdentity(SHA256, file_sha256(text))
    from scenetag.tiler.remote import object_stat

    stat = object_stat(text)
    if stat is None:
        prefix = vsi_prefix(text)
        if prefix and prefix not in ("vsicurl",):  # /vsizip/ and friends: the archive they wrap, and the member
            inner = _vsi_inner(text)
            archive = _archive_of(inner)
            if archive is not None:
                outer = scene_identity(archive)
                return SceneIdentity.of(outer.kind, {"archive": outer.digest, "member": redact(text)})
        return SceneIdentity.of(LOCATION, {"location": redact(text)})
    detail = {"url": stat.url, "size": stat.size, **stat.extra}
    detail.pop("tiff", None)
    if stat.etag:
        return SceneIdentity.of(ETAG, {**detail, "etag": stat.etag})
    if stat.last_modified or stat.size is not None:
        return SceneIdentity.of(SIZE_MTIME, {**detail, "last_modified": stat.last_modified})
    return SceneIdentity.of(LOCATION, {"location": stat.url})


def _archive_of(inner: str) -> str | None:
    """The archive file in a ``/vsizip/`` path's inner part (``s3://b/a.zip/x.tif`` → ``s3://b/a.zip``)."""
    lowered = inner.lower()
    for suffix in (".zip", ".tar.gz", ".tgz", ".tar", ".gz"):
        i = lowered.find(suffix + "/")
        if i >= 0:
            return inner[: i + len(suffix)]
        if lowered.endswith(suffix):
            return inner
    return None
