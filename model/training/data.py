"""Labelled chips in Kaggle/Planet format, the seeded split, and augmentation.

The format is a CSV with ``image_name,tags`` (tags separated by spaces) and a
folder of ``<image_name>.jpg`` chips.  Planet's JPEGs are stored in CMYK mode,
so every image is opened with Pillow and converted to RGB.  The whole set is
decoded once into a uint8 ``(N, 3, H, W)`` array: the Planet sample is small
(795 x 256 x 256 x 3 = 156 MB) and decoding once keeps the training loop free
of worker processes on a small machine.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from scenetag.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
SIZE_POLICIES = ("refuse", "resize")
SPLIT_FILE = "split.json"


@dataclass(frozen=True)
class LabelTable:
    """Image names and their multi-hot targets, in CSV order."""

    names: tuple[str, ...]
    labels: tuple[str, ...]
    targets: np.ndarray  # (N, L) uint8

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, names: Sequence[str]) -> "LabelTable":
        """The rows for ``names``, in that order."""
        index = {n: i for i, n in enumerate(self.names)}
        missing = [n for n in names if n not in index]
        if missing:
            raise DataError(
                f"{len(missing)} split images are not in the label CSV, e.g. {missing[:3]}: "
                "the split was made for other data; retrain or pass --split all"
            )
        rows = [index[n] for n in names]
        return LabelTable(tuple(names), self.labels, self.targets[rows])

    def counts(self) -> dict[str, int]:
        """Positives per label."""
        return {lab: int(c) for lab, c in zip(self.labels, self.targets.sum(0))}


def read_labels(csv_path: str | Path, labels: Sequence[str] | None = None) -> LabelTable:
    """Read a Kaggle/Planet ``image_name,tags`` CSV.

    Args:
        csv_path: The CSV file.
        labels: The label vocabulary, in output order.  Tags outside it are a
            :class:`DataError`.  Without it, the sorted set of tags in the CSV
            is used.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f"label CSV {str(csv_path)!r} does not exist: pass --labels PATH")
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise DataError(f"label CSV {str(csv_path)!r} is empty: it needs the header 'image_name,tags' and rows")
        header = [h.strip().lower() for h in header]
        if header[:2] != ["image_name", "tags"]:
            raise DataError(
                f"label CSV {str(csv_path)!r} has header {header}: expected 'image_name,tags' (Kaggle/Planet format)"
            )
        rows = []
        for lineno, row in enumerate(reader, start=2):
            if not row or not any(c.strip() for c in row):
                continue
            if len(row) < 2:
                raise DataError(f"{csv_path}:{lineno}: row {row!r} has no tags column")
            rows.append((row[0].strip(), row[1].split(), lineno))
    if not rows:
        raise DataError(f"label CSV {str(csv_path)!r} has a header but no rows")
    seen: dict[str, int] = {}
    for name, _, lineno in rows:
        if name in seen:
            raise DataError(f"{csv_path}:{lineno}: image {name!r} is listed twice (first on line {seen[name]})")
        seen[name] = lineno
    all_tags = sorted({t for _, tags, _ in rows for t in tags})
    if labels is None:
        labels = tuple(all_tags)
    labels = tuple(labels)
    unknown = sorted(set(all_tags) - set(labels))
    if unknown:
        example = next(lineno for _, tags, lineno in rows if set(tags) & set(unknown))
        raise DataError(
            f"label CSV {str(csv_path)!r} has tags {unknown} (first on line {example}) that are not "
            f"model labels {list(labels)}: fix the CSV or train a model with these labels"
        )
    col = {lab: j for j, lab in enumerate(labels)}
    targets = np.zeros((len(rows), len(labels)), dtype=np.uint8)
    for i, (_, tags, _) in enumerate(rows):
        for t in tags:
            targets[i, col[t]] = 1
    return LabelTable(tuple(n for n, _, _ in rows), labels, targets)


def find_image(images_dir: Path, name: str) -> Path | None:
    """The image file for ``name`` in ``images_dir``, trying the usual suffixes."""
    p = images_dir / name
    if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
        return p
    for suffix in IMAGE_SUFFIXES:
        q = images_dir / f"{name}{suffix}"
        if q.is_file():
            return q
    return None


def load_images(
    images_dir: str | Path,
    names: Sequence[str],
    size: int,
    on_wrong_size: str = "refuse",
    chip_size_option: bool = False,
) -> np.ndarray:
    """Decode chips into a uint8 ``(N, 3, size, size)`` RGB array.

    Every image is converted to RGB with Pillow (Planet's JPEGs are CMYK; their
    raw channels would give inverted colours).

    Args:
        on_wrong_size: "refuse" raises :class:`DataError` for an image that is
            not ``size`` x ``size``; "resize" resamples it (bilinear) and logs it.
        chip_size_option: The caller's command takes ``--chip-size`` (train): the refusal names it.
    """
    from PIL import Image

    if on_wrong_size not in SIZE_POLICIES:
        raise DataError(f"on_wrong_size {on_wrong_size!r} is unknown: use one of {SIZE_POLICIES}")
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise DataError(f"image folder {str(images_dir)!r} does not exist")
    paths = [find_image(images_dir, n) for n in names]
    missing = [n for n, p in zip(names, paths) if p is None]
    if missing:
        raise DataError(
            f"{len(missing)} of {len(names)} images in the label CSV are missing from "
            f"{str(images_dir)!r}, e.g. {missing[:5]}: add them or remove their rows"
        )
    out = np.empty((len(names), 3, size, size), dtype=np.uint8)
    resized = 0
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as im:
                im = im.convert("RGB")
                if im.size != (size, size):
                    if on_wrong_size == "refuse":
                        raise DataError(
                            f"image {str(p)!r} is {im.size[0]}x{im.size[1]}, the model takes "
                            f"{size}x{size}: refused; pass --resize to resample"
                            + (f", or --chip-size {im.size[0]}" if chip_size_option else "")
                        )
                    im = im.resize((size, size), Image.BILINEAR)
                    resized += 1
                out[i] = np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
        except DataError:
            raise
        except OSError as exc:
            raise DataError(f"image {str(p)!r} cannot be read: {exc}") from exc
    if resized:
        log.warning("resized %d of %d images to %dx%d", resized, len(names), size, size)
    return out


# -- split --------------------------------------------------------------------
def split_indices(targets: np.ndarray, val_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, iteratively stratified train/val split of a multi-hot matrix.

    Returns sorted ``(train, val)`` row indices.  The same targets, fraction
    and seed give the same split on any machine.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    n = len(targets)
    if n < 2:
        raise DataError(f"cannot split {n} image(s) into train and validation: need at least 2")
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
    train, val = next(splitter.split(np.zeros((n, 1)), targets))
    return np.sort(train), np.sort(val)


def targets_digest(names: Sequence[str], targets: np.ndarray) -> str:
    """Short hash of the labelled set, recorded with a split to detect other data."""
    h = hashlib.sha256()
    for name, row in zip(names, targets):
        h.update(name.encode())
        h.update(bytes(row.astype(np.uint8)))
    return h.hexdigest()[:16]


def make_split(table: LabelTable, val_fraction: float = 0.2, seed: int = 0) -> dict:
    """The split as a JSON-ready record: names on each side, seed, fraction, data hash."""
    train, val = split_indices(table.targets, val_fraction, seed)
    return {
        "method": "iterstrat.MultilabelStratifiedShuffleSplit",
        "seed": seed,
        "val_fraction": val_fraction,
        "data_digest": targets_digest(table.names, table.targets),
        "train": [table.names[i] for i in train],
        "val": [table.names[i] for i in val],
    }


def write_split(split: dict, path: str | Path) -> None:
    """Write a split record as JSON."""
    Path(path).write_text(json.dumps(split, indent=1))


def read_split(path: str | Path) -> dict:
    """Read a split record written by :func:`write_split`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split file {str(path)!r} does not exist: pass --split-file the split.json written by train")
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise DataError(f"split file {str(path)!r} is not JSON: {exc}") from exc
    for key in ("train", "val"):
        if key not in data or not isinstance(data[key], list):
            raise DataError(f"split file {str(path)!r} lacks the list {key!r}")
    return data


# -- augmentation -------------------------------------------------------------
def augment_batch(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random horizontal flip and 0/90/180/270° rotation per chip (the dihedral group).

    Chips from above have no up or left, so the 8 symmetries are all valid
    views.  No colour jitter: the colour of a chip carries its label (haze,
    cloud, bare ground).
    """
    out = np.empty_like(batch)
    flips = rng.integers(0, 2, len(batch))
    rots = rng.integers(0, 4, len(batch))
    for i, (chip, flip, rot) in enumerate(zip(batch, flips, rots)):
        if flip:
            chip = chip[:, :, ::-1]
        out[i] = np.rot90(chip, k=int(rot), axes=(1, 2))
    return out


def iterate_batches(n: int, batch_size: int, rng: np.random.Generator | None = None, drop_last: bool = False):
    """Index batches over ``range(n)``, shuffled when ``rng`` is given."""
    order = rng.permutation(n) if rng is not None else np.arange(n)
    stop = n - (n % batch_size) if drop_last and n >= batch_size else n
    for start in range(0, stop, batch_size):
        yield order[start:start + batch_size]
