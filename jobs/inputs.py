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
    (files, folders or globs), blank lines and ``#`` comments ignored,
    relative paths taken from the list file's folder.

A path that does not exist is kept: it becomes a failed scene in the report
("does not exist"), so one typo does not stop a night's work, and is not
silently dropped either.  Scenes are deduplicated by absolute path and keep
the order in which they were given.
"""

from __future__ import annotations

import glob
import logging
import os
from pathlib import Path
from typing import Iterable, Sequence

from scenetag.errors import ScenetagError

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


def _folder_rasters(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES)


def _read_list(path: Path, seen_lists: set[Path]) -> list[Path]:
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
        if line:
            entry = Path(os.path.expanduser(line))
            entries.append(str(entry if entry.is_absolute() else path.parent / entry))
    return _expand(entries, seen_lists)


def _expand(inputs: Iterable[str], seen_lists: set[Path]) -> list[Path]:
    out: list[Path] = []
    for text in inputs:
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
        else:
            out.append(path)
    return out


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Absolute scene paths from files, folders, globs and list files, deduplicated, in order."""
    seen: set[Path] = set()
    scenes = []
    for path in _expand([str(i) for i in inputs], set()):
        absolute = Path(os.path.abspath(path))
        if absolute not in seen:
            seen.add(absolute)
            scenes.append(absolute)
    return scenes


def output_paths(scenes: Sequence[Path], out_dir: str | os.PathLike) -> list[Path]:
    """``OUT_DIR/<scene stem>.gpkg`` for each scene; two scenes with one stem are refused.

    Names are a function of the scene alone, so a re-run finds the same output
    whatever else is in the batch.
    """
    out_dir = Path(out_dir)
    by_name: dict[str, Path] = {}
    outs = []
    for scene in scenes:
        name = f"{scene.stem}.gpkg"
        key = name.lower()  # case-insensitive file systems would merge them too
        if key in by_name:
            raise InputError(
                f"scenes {str(by_name[key])!r} and {str(scene)!r} would both be written to "
                f"{str(out_dir / name)!r}: run them with separate --out-dir folders, or rename one"
            )
        by_name[key] = scene
        outs.append(out_dir / name)
    return outs
