"""A scene as given (a path, a URL, an object-storage path, a STAC item) → what GDAL opens and how it is named.

:func:`resolve_source` is the first thing a scene job does with its scene:
a STAC item becomes its chosen asset's location (:mod:`jobs.stac`); any
other location is opened as it is.  :func:`source_identity` is the scene's
identity for the signature (:func:`scenetag.hashing.scene_identity`, or the
STAC item's), computed once per scene without reading pixels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from scenetag.errors import SceneReadError
from scenetag.hashing import SceneIdentity, scene_identity
from scenetag.model.spec import ModelSpec
from scenetag.tiler.location import is_remote, redact, scene_name


@dataclass(frozen=True)
class SceneSource:
    """Where a scene's pixels are, what it is called, and what else is known about it."""

    #: What was given (may hold a signed URL's credentials: never shown).
    given: str
    #: What GDAL opens: the given location, or a STAC item's asset.
    location: str
    #: The scene's name: its outputs' and its chips' ``scene_id`` (the file's stem, a STAC item's id).
    name: str
    #: The STAC item's provenance (:func:`jobs.stac.item_provenance`), for an item.
    stac: dict | None = None
    #: The identity when the input says it (a STAC item's ``updated`` or checksum), else asked of the scene.
    identity: SceneIdentity | None = None
    #: Bands in model order from the asset's band metadata, used when ``--bands`` is not given.
    bands: tuple[int, ...] | None = None

    @property
    def remote(self) -> bool:
        return is_remote(self.location)

    @property
    def shown(self) -> str:
        """The location as messages and provenance show it (redacted; a local path absolute)."""
        return redact(self.location) if self.remote else os.path.abspath(self.location)


def resolve_source(scene: str | os.PathLike, spec: ModelSpec, asset: str | None = None,
                   bands: tuple[int, ...] | None = None) -> SceneSource:
    """The :class:`SceneSource` of ``scene``: a STAC item read and its asset chosen, else the location itself."""
    from scenetag.jobs.stac import choose_asset, is_stac, item_provenance, read_item, stac_identity

    text = str(scene)
    if is_stac(text):
        item, href = read_item(text)
        choice = choose_asset(item, href, spec, asset, bands)
        return SceneSource(text, choice.href, item.id, item_provenance(item, href, choice),
                           stac_identity(item, choice), choice.bands)
    return SceneSource(text, text, scene_name(text))


def source_identity(source: SceneSource | str) -> SceneIdentity:
    """The scene's identity (:mod:`scenetag.hashing`): the STAC item's when it gives one, else the scene's own."""
    if isinstance(source, str):
        source = SceneSource(source, source, scene_name(source))
    if source.identity is not None:
        return source.identity
    try:
        return scene_identity(source.location)
    except SceneReadError:
        raise
    except OSError as exc:
        raise SceneReadError(f"scene {source.shown!r} cannot be read ({exc})") from exc
