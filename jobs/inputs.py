"""Expand a batch's INPUTS into scene paths and give each scene its output name.

An input is one of:

a raster file
    Taken as it is (any suffix but the list suffixes below).
a folder
    Its rasters (:data:`RASTER_SUFFIXES`), not recursively; use a glob such as
    ``'scenes/**/*.tif'`` to go down.
a glob
    Anything with ``*``, ``?`` or ``[``; ``**`` matches folders recursively.
    A glob that matches nothing is logged and contributes nothing, so a cron
    job over an empty drop folder has nothing to do rather than failing.
a list file
    A text file ending in one of :data:`LIST_SUFFIXES`: one input per line
    (files, folders, globs or URLs), blank lines and ``#`` comments ignored,
    relative paths taken from the list file's folder.
a remote scene
    A URL (``https://...``), an object-storage path (``s3://bucket/key``) or a
    GDAL path (``/vsicurl/...``), kept exactly as given (never a
    :class:`~pathlib.Path`, which folds ``http://`` into ``http:/``).
an object-storage prefix or glob
    ``s3://bucket/drop/`` (its rasters and STAC items, not recursively) or
    ``s3://bucket/**/*.tif``, listed through fsspec (:func:`tiler.remote.list_objects`).
a STAC Item or ItemCollection
    A ``.json`` file or URL: each item is a scene (``LOCATION#ITEM_ID``),
    named by its id; a folder's ``.json`` files that are STAC items are too.

A path that does not exist is kept: it becomes a failed scene in the report
("does not exist"), so one typo does not stop a night's work, and is not
silently dropped either.  Scenes are deduplicated by absolute path (remote
ones by location) and keep the order in which they were given.  Local scenes
come back as :class:`~pathlib.Path`, remote ones and STAC items as ``str``.
"""

from __future__ import annotations

import glob
import logging
import os
from pathlib import Path
from typing import Iterable, Sequence

from scenetag.errors import ScenetagError
from scenetag.tiler.location import is_remote, redact, scene_name, scheme

log = logging.getLogger(__name__)

#: Suffixes taken as rasters when a folder is scanned.
RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img")
#: Suffixes of list files.
LIST_SUFFIXES = (".txt", ".lst", ".list")
_GLOB_CHARS = set("*?[")


class InputError(ScenetagError, ValueError):
    """The batch inputs cannot be turned into a set of scenes and outputs."""


def _is_glob(text: str) -> bool:
    return bool(_GLOB_CHARS & set(text))


def _folder_rasters(folder: Path) -> list[Path | str]:
    from scenetag.jobs.stac import STAC_SUFFIXES, expand_stac, looks_like_stac

    out: list[Path | str] = []
    for p in sorted(folder.iterdir()):
        if not p.is_file():
            continue
        if p.suffix.lower() in RASTER_SUFFIXES:
            out.append(p)
        elif p.suffix.lower() in STAC_SUFFIXES and looks_like_stac(str(p)):  # other JSON (a report) is not a scene
            out.extend(expand_stac(str(p.resolve())))
    return out


def _expand_remote(text: str) -> list[str]:
    """A remote input: an object-storage prefix or glob listed (fsspec), a STAC input's items, else itself."""
    from scenetag.jobs.stac import STAC_SUFFIXES, expand_stac, is_stac
    from scenetag.tiler.location import fsspec_url

    store_url = fsspec_url(text)
    if not scheme(text) and store_url and scheme(store_url) not in ("http", "https") and (
            _is_glob(text) or text.endswith("/")):
        text = store_url  # /vsis3/bucket/drop/ is listed as s3://bucket/drop/
    if scheme(text) in ("http", "https") or not scheme(text):
        if scheme(text) and _is_glob(text.split("?", 1)[0]):
            raise InputError(f"{redact(text)!r}: globs work over object storage (s3://, gs://, az://), not over "
                             "HTTP, which cannot list: give the URLs, or a list file of them")
        return expand_stac(text) if is_stac(text) else [text]
    from scenetag.tiler.remote import is_folder, list_objects

    if _is_glob(text) or is_folder(text):
        found = list_objects(text, RASTER_SUFFIXES + STAC_SUFFIXES)
        if not found:
            log.warning("%r holds or matches no rasters", redact(text))
        out: list[str] = []
        for url in found:
            out.extend(expand_stac(url) if is_stac(url) else [url])
        return out
    return expand_stac(text) if is_stac(text) else [text]


def _read_list(path: Path, seen_lists: set[Path]) -> list[Path | str]:
    if path.resolve() in seen_lists:
        raise InputError(f"list file {str(path)!r} includes itself, directly or through another list")
    seen_lists = seen_lists | {path.resolve()}
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"list file {str(path)!r} cannot be read as text ({exc})") from exc
    entries = []
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line and is_remote(line):
            entries.append(line)
        elif line:
            entry = Path(os.path.expanduser(line))
            entries.append(str(entry if entry.is_absolute() else path.parent / entry))
    return _expand(entries, seen_lists)


def _expand(inputs: Iterable[str], seen_lists: set[Path]) -> list[Path | str]:
    from scenetag.jobs.stac import expand_stac, is_stac

    out: list[Path | str] = []
    for text in inputs:
        if is_remote(text):
            out.extend(_expand_remote(text))
            continue
        text = os.path.expanduser(str(text))
        path = Path(text)
        if path.is_dir():
            found = _folder_rasters(path)
            if not found:
                log.warning("folder %s holds no rasters (%s)", path, ", ".join(RASTER_SUFFIXES))
            out.extend(found)
        elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
            out.extend(_read_list(path, seen_lists))
        elif not path.exists() and _is_glob(text):
            found = sorted(Path(p) for p in glob.glob(text, recursive=True))
            found = [p for p in found if p.is_file()]
            if not found:
                log.warning("%r matches no files", text)
            out.extend(found)
        elif path.is_file() and is_stac(text):
            out.extend(expand_stac(os.path.abspath(text)))
        else:
            out.append(path)
    return out


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path | str]:
    """Scenes from files, folders, globs, list files, URLs, object storage and STAC items, deduplicated, in order.

    Local scenes are absolute :class:`~pathlib.Path`; remote ones and STAC items ``str``, as given.
    """
    seen: set[Path | str] = set()
    scenes: list[Path | str] = []
    for path in _expand([i if isinstance(i, str) else os.fspath(i) for i in inputs], set()):
        key = path if isinstance(path, str) and (is_remote(path) or "#" in path) else Path(os.path.abspath(path))
        if key not in seen:
            seen.add(key)
            scenes.append(key)
    return scenes


def output_paths(scenes: Sequence[Path | str], out_dir: str | os.PathLike) -> list[Path]:
    """``OUT_DIR/<scene name>.gpkg`` for each scene (a file's stem, a STAC item's id); two of one name are refused.

    Names are a function of the scene alone, so a re-run finds the same output
    whatever else is in the batch.
    """
    out_dir = Path(out_dir)
    by_name: dict[str, Path | str] = {}
    outs = []
    for scene in scenes:
        name = f"{scene_name(scene)}.gpkg"
        key = name.lower()  # case-insensitive file systems would merge them too
        if key in by_name:
            raise InputError(
                f"scenes {redact(by_name[key])!r} and {redact(scene)!r} would both be written to "
                f"{str(out_dir / name)!r}: run them with separate --out-dir folders, or rename one"
            )
        by_name[key] = scene
        outs.append(out_dir / name)
    return outs
