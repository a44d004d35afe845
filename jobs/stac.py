"""STAC items as scenes: read them with pystac, choose the asset, identify and name the scene.

A STAC input is a ``.json`` location (a file or a URL) holding an Item or an
ItemCollection.  One item is addressed as ``LOCATION#ITEM_ID`` (what
:func:`expand_stac` gives ``batch`` for each item of a collection); a plain
item file is its own one item.  The item's id names the scene and its
outputs; its id, collection and datetime, and the asset used and why, go into
the provenance (``runs.scene_source``).

The asset (:func:`choose_asset`) is ``--asset NAME``, or the image asset
whose bands (``eo:bands``, or STAC 1.1 ``bands``, by common name) are the
model spec's: an RGB model takes the asset whose bands are red, green, blue
(Planet's and Maxar's ``visual``); with ``--bands`` the asset whose bands at
those numbers are; failing that, the one asset holding all the model's bands
(``analytic``: blue, green, red, nir), read at the bands the metadata names.
Two assets that fit equally are refused: ``--asset`` chooses.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Sequence

from scenetag.errors import StacError
from scenetag.hashing import STAC, SceneIdentity
from scenetag.model.spec import ModelSpec
from scenetag.tiler.location import is_remote, redact, scheme

log = logging.getLogger(__name__)

#: Suffixes of STAC inputs (Items and ItemCollections are GeoJSON).
STAC_SUFFIXES = (".json", ".geojson")
#: Media types of assets GDAL reads as rasters.
_IMAGE_TYPES = ("image/tiff", "image/vnd.stac.geotiff", "image/jp2", "application/x-hdf", "image/x.geotiff")
_IMAGE_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img")
#: Asset roles that are never the scene.
_NOT_DATA_ROLES = {"thumbnail", "overview", "metadata", "snow-ice", "cloud", "data-mask", "udm", "udm2"}


@dataclass(frozen=True)
class AssetChoice:
    """The asset a scene is read from, and why it was chosen."""

    key: str
    href: str
    reason: str
    #: 1-based bands in the model's order, from the asset's band metadata (None: the scene's own rule).
    bands: tuple[int, ...] | None = None


def split_item(location: str) -> tuple[str, str]:
    """``LOCATION#ITEM_ID`` → ``(LOCATION, ITEM_ID)``; ``("item.json", "")`` without a fragment."""
    head, sep, fragment = str(location).rpartition("#")
    if sep and head and "/" not in fragment and head.split("?", 1)[0].lower().endswith(STAC_SUFFIXES):
        return head, fragment
    return str(location), ""


def is_stac(location: str | os.PathLike) -> bool:
    """Whether ``location`` names a STAC input (a ``.json`` file or URL, possibly ``#ITEM_ID``)."""
    href, _ = split_item(str(location))
    path = href.split("?", 1)[0] if is_remote(href) else href
    return path.lower().endswith(STAC_SUFFIXES)


def _read_text(href: str) -> str:
    """The text at ``href``: a local file, an http(s) URL (pystac's reader) or object storage (fsspec)."""
    shown = redact(href)
    if not is_remote(href):
        try:
            with open(href, encoding="utf-8") as f:
                return f.read()
        except FileNotFoundError:
            raise StacError(f"STAC item {shown!r} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise StacError(f"STAC item {shown!r} cannot be read ({exc})") from exc
    if scheme(href) in ("http", "https"):
        import urllib.error

        from pystac.stac_io import DefaultStacIO

        from scenetag.tiler.remote import _http_error, _network_error

        try:
            return DefaultStacIO().read_text_from_href(href)
        except Exception as exc:  # pystac wraps urllib's errors in its own, keeping the cause
            cause = exc.__cause__ or exc
            if isinstance(cause, urllib.error.HTTPError):
                raise _http_error(shown, cause.code) from None
            raise _network_error(shown, href, cause) from None
    from scenetag.tiler.remote import _store_error, filesystem

    fs, path = filesystem(href)
    try:
        with fs.open(path, "r", encoding="utf-8") as f:
            return f.read()
    except Exception as exc:
        raise _store_error(shown, href, exc) from None


def _read_stac(href: str) -> Any:
    """The pystac Item or ItemCollection at ``href``."""
    from scenetag.errors import require

    pystac = require("pystac", "remote")

    shown = redact(href)
    text = _read_text(href)
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise StacError(f"STAC item {shown!r} is not JSON ({exc}): give a STAC Item or ItemCollection") from None
    kind = data.get("type") if isinstance(data, dict) else None
    try:
        if kind == "Feature":
            return pystac.Item.from_dict(data, href=href if not is_remote(href) or scheme(href) else None)
        if kind == "FeatureCollection":
            return pystac.ItemCollection.from_dict(data)
    except Exception as exc:  # pystac's own errors for a malformed item
        raise StacError(f"STAC item {shown!r} is not a valid STAC Item or ItemCollection ({exc})") from None
    raise StacError(f"{shown!r} is JSON but not a STAC Item or ItemCollection (type {kind!r}): give an item")


def read_item(location: str) -> tuple[Any, str]:
    """The item at ``location`` (``FILE``, or ``FILE#ID`` for one item of a collection), and its file's href."""
    import pystac

    href, wanted = split_item(location)
    found = _read_stac(href)
    shown = redact(href)
    if isinstance(found, pystac.Item):
        if wanted and found.id != wanted:
            raise StacError(f"STAC item {shown!r} has the id {found.id!r}, not {wanted!r}")
        return found, href
    items = {item.id: item for item in found.items}
    if wanted:
        if wanted not in items:
            raise StacError(f"ItemCollection {shown!r} holds no item {wanted!r} (it holds {', '.join(items) or 'none'})")
        return items[wanted], href
    if len(items) != 1:
        raise StacError(f"ItemCollection {shown!r} holds {len(items)} items: give it to batch, or name one as "
                        f"{shown}#ITEM_ID")
    return next(iter(items.values())), href


def expand_stac(location: str) -> list[str]:
    """``LOCATION#ITEM_ID`` for each item at ``location`` (one for an Item, each for an ItemCollection)."""
    import pystac

    href, wanted = split_item(location)
    if wanted:
        return [location]
    found = _read_stac(href)
    items = [found] if isinstance(found, pystac.Item) else list(found.items)
    if not items:
        log.warning("ItemCollection %s holds no items", redact(href))
    return [f"{href}#{item.id}" for item in items]


def looks_like_stac(path: str) -> bool:
    """Whether a local ``.json`` file holds a STAC Item or ItemCollection (for folder scans)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("type") in ("Feature", "FeatureCollection") and "assets" in json.dumps(
        data.get("features", [data])[:1])


def _asset_href(asset: Any, base: str) -> str:
    """The asset's href, absolute (a relative one is taken from the item file's place)."""
    from pystac.utils import make_absolute_href

    href = asset.href
    if is_remote(href) or os.path.isabs(href):
        return href
    return make_absolute_href(href, base) if base else os.path.abspath(href)


def band_names(asset: Any) -> list[str] | None:
    """The asset's bands by common name (else name), from ``eo:bands`` or STAC 1.1 ``bands``; None if unsaid."""
    from pystac.extensions.eo import EOExtension

    names: list[str] | None = None
    try:
        bands = EOExtension.ext(asset).bands
        if bands:
            names = [(b.common_name or b.name or "").lower() for b in bands]
    except Exception:  # the item does not declare eo: STAC 1.1 keeps bands in the asset's own field
        names = None
    if names is None:
        raw = asset.extra_fields.get("bands") or asset.extra_fields.get("eo:bands")
        if isinstance(raw, list) and raw:
            names = [str(b.get("eo:common_name") or b.get("common_name") or b.get("name") or "").lower()
                     for b in raw if isinstance(b, dict)]
    return names or None


def _is_image(key: str, asset: Any) -> bool:
    roles = set(asset.roles or ())
    if roles & _NOT_DATA_ROLES and not roles & {"data", "visual"}:
        return False
    media = (asset.media_type or "").lower()
    if media:
        return any(t in media for t in _IMAGE_TYPES) or "geotiff" in media
    return asset.href.split("?", 1)[0].lower().endswith(_IMAGE_SUFFIXES)


def _fit(names: list[str], spec: ModelSpec, bands: Sequence[int] | None) -> tuple[str, tuple[int, ...] | None]:
    """How an asset's ``names`` fit the model: ``("exact"|"bands"|"subset", bands)`` or ``("no", None)``."""
    want = [b.lower() for b in spec.bands]
    if bands:
        picked = [names[b - 1] if 0 < b <= len(names) else None for b in bands]
        return ("bands", None) if picked == want else ("no", None)
    if names == want:
        return "exact", None
    if all(w in names for w in want):
        return "subset", tuple(names.index(w) + 1 for w in want)
    return "no", None


def choose_asset(item: Any, base: str, spec: ModelSpec, asset: str | None = None,
                 bands: Sequence[int] | None = None) -> AssetChoice:
    """The asset of ``item`` to read for a model of ``spec`` (see the module's text), or a one-line StacError."""
    assets = item.assets
    want = ", ".join(spec.bands)
    if asset is not None:
        if asset not in assets:
            raise StacError(f"STAC item {item.id!r} has no asset {asset!r}: its assets are "
                            f"{', '.join(assets) or 'none'}")
        names = band_names(assets[asset])
        if names is None:
            return AssetChoice(asset, _asset_href(assets[asset], base), f"--asset {asset}")
        how, derived = _fit(names, spec, bands)
        if how == "no":
            raise StacError(f"asset {asset!r} of STAC item {item.id!r} has the bands {', '.join(names)} and the model "
                            f"expects {want}{' at --bands ' + ','.join(map(str, bands)) if bands else ''}: choose "
                            "another --asset, or --bands")
        return AssetChoice(asset, _asset_href(assets[asset], base),
                           f"--asset {asset} (bands {', '.join(names)})", derived)
    images = {k: a for k, a in assets.items() if _is_image(k, a)}
    if not images:
        raise StacError(f"STAC item {item.id!r} has no image asset GDAL can read (its assets: "
                        f"{', '.join(assets) or 'none'}): give one with --asset")
    fits: dict[str, list[tuple[str, tuple[int, ...] | None, list[str]]]] = {"exact": [], "bands": [], "subset": []}
    unknown, mismatched = [], []
    for key, a in images.items():
        names = band_names(a)
        if names is None:
            unknown.append(key)
            continue
        how, derived = _fit(names, spec, bands)
        if how == "no":
            mismatched.append(f"{key} ({', '.join(names)})")
        else:
            fits[how].append((key, derived, names))
    for how in ("exact", "bands", "subset"):
        found = fits[how]
        if len(found) > 1:
            raise StacError(f"STAC item {item.id!r} has {len(found)} assets whose bands fit the model "
                            f"({', '.join(k for k, _, _ in found)}): choose one with --asset")
        if found:
            key, derived, names = found[0]
            why = {"exact": f"its bands ({', '.join(names)}) are the model's",
                   "bands": f"its bands at --bands {','.join(map(str, bands or ()))} are the model's ({want})",
                   "subset": f"it holds the model's bands ({want}) as bands {','.join(map(str, derived or ()))} of "
                             f"{', '.join(names)}"}[how]
            return AssetChoice(key, _asset_href(images[key], base), why, derived)
    if len(unknown) == 1:
        return AssetChoice(unknown[0], _asset_href(images[unknown[0]], base),
                           "the only image asset (it does not say its bands)")
    visual = [k for k in unknown if "visual" in (images[k].roles or ()) or k == "visual"]
    if len(visual) == 1 and [b.lower() for b in spec.bands] == ["red", "green", "blue"]:
        return AssetChoice(visual[0], _asset_href(images[visual[0]], base), "the visual asset, for an RGB model")
    if unknown:
        raise StacError(f"STAC item {item.id!r} has {len(unknown)} candidate assets ({', '.join(unknown)}) that "
                        "do not say their bands: choose one with --asset")
    raise StacError(f"no asset of STAC item {item.id!r} has the model's bands ({want}): "
                    f"{'; '.join(mismatched)}: choose one with --asset and --bands")


def item_provenance(item: Any, href: str, choice: AssetChoice) -> dict:
    """What the ``runs`` table keeps of the item: id, collection, datetime, the asset and why."""
    when = item.datetime or item.common_metadata.start_datetime
    return {"item": item.id, "collection": item.collection_id, "datetime": when.isoformat() if when else None,
            "item_href": redact(f"{href}"), "asset": choice.key, "asset_href": redact(choice.href),
            "asset_reason": choice.reason}


def stac_identity(item: Any, choice: AssetChoice) -> SceneIdentity | None:
    """The scene's identity from the item's ``updated`` time or the asset's ``file:checksum``; None if neither."""
    updated = item.properties.get("updated")
    checksum = item.assets[choice.key].extra_fields.get("file:checksum")
    if not updated and not checksum:
        return None
    return SceneIdentity.of(STAC, {"item": item.id, "collection": item.collection_id, "updated": updated,
                                   "checksum": checksum, "asset": choice.key, "href": redact(choice.href)})
