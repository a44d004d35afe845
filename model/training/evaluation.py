"""Labelled evaluation sets for a model: which images (split), their targets and the model's probabilities.

``split="val"`` finds the validation images of the training run that made the
model, so evaluation and calibration never score training chips.  The split is
looked up, in order: an explicit split file; the validation names stored in
the spec (``extra["split"]["val"]``); ``split.json`` beside the model file;
and last, recomputed from the seed and fraction in ``extra["split"]``, which
is the same seeded stratified split train made (checked by the data digest).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scenetag.model.training.data import LabelTable, load_images, make_split, read_labels, read_split, targets_digest
from scenetag.model.spec import ModelSpec
from scenetag.atomic import atomic_path
from scenetag.errors import DataError, OutputExistsError

log = logging.getLogger(__name__)

SPLITS = ("val", "train", "all")


def default_labels_csv(images_dir: str | Path) -> Path:
    """``DATA/../labels.csv``: the Kaggle/Planet layout."""
    return Path(images_dir).resolve().parent / "labels.csv"


def split_names(
    table: LabelTable,
    spec: ModelSpec,
    split: str = "val",
    split_file: str | Path | None = None,
    model_path: str | Path | None = None,
) -> tuple[list[str], str]:
    """Image names of ``split`` for this model, and where the split came from."""
    if split not in SPLITS:
        raise DataError(f"split {split!r} is unknown: use one of {SPLITS}")
    if split == "all":
        return list(table.names), "all images"
    record = None
    source = ""
    info = dict(spec.extra.get("split", {})) if isinstance(spec.extra.get("split"), dict) else {}
    if split_file is not None:
        record, source = read_split(split_file), str(split_file)
    elif isinstance(info.get("val"), list):
        val = set(info["val"])
        record = {"val": info["val"], "train": [n for n in table.names if n not in val]}
        source = "spec extra.split"
    elif model_path is not None and (Path(model_path).parent / "split.json").is_file():
        path = Path(model_path).parent / "split.json"
        record, source = read_split(path), str(path)
    elif "seed" in info and "val_fraction" in info:
        digest = targets_digest(table.names, table.targets)
        if info.get("data_digest") and info["data_digest"] != digest:
            raise DataError(
                f"the model was trained on other labelled data (digest {info['data_digest']}, this CSV "
                f"{digest}): its validation split cannot be rebuilt; pass --split-file or --split all"
            )
        record = make_split(table, float(info["val_fraction"]), int(info["seed"]))
        source = f"recomputed (seed {info['seed']}, val fraction {info['val_fraction']})"
    else:
        raise DataError(
            "the model records no training split: pass --split-file split.json (written by train) "
            "or --split all"
        )
    names = list(record[split])
    known = set(table.names)
    missing = [n for n in names if n not in known]
    if missing:
        raise DataError(
            f"{len(missing)} {split} images of the split ({source}) are not in the label CSV, "
            f"e.g. {missing[:3]}: pass the CSV the model was trained with"
        )
    return names, source


def load_eval_set(
    images_dir: str | Path,
    labels_csv: str | Path | None,
    spec: ModelSpec,
    split: str = "val",
    split_file: str | Path | None = None,
    model_path: str | Path | None = None,
    on_wrong_size: str = "refuse",
) -> tuple[LabelTable, np.ndarray, str]:
    """``(table, uint8 images, split source)`` for the model's labels and ``split``."""
    labels_csv = Path(labels_csv) if labels_csv else default_labels_csv(images_dir)
    table = read_labels(labels_csv, spec.labels)
    names, source = split_names(table, spec, split, split_file, model_path)
    if not names:
        raise DataError(f"the {split} split is empty")
    sub = table.subset(names)
    images = load_images(images_dir, sub.names, spec.chip_size, on_wrong_size)
    log.info("%s split: %d images (%s)", split, len(sub), source)
    return sub, images, source


def predict_all(predictor, images: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """Probabilities of a predictor over an image array, in batches (default: the backend's size)."""
    batch_size = batch_size or predictor.batch_size
    out = [predictor.predict(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, predictor.spec.n_labels), np.float32)



@dataclass
class ScoredSet:
    """A labelled set and a model's probabilities on it."""

    table: LabelTable
    probs: np.ndarray
    #: Where the split came from (see :func:`split_names`).
    source: str


def score_eval_set(
    predictor,
    images_dir: str | Path,
    labels_csv: str | Path | None,
    split: str = "val",
    split_file: str | Path | None = None,
    model_path: str | Path | None = None,
    on_wrong_size: str = "refuse",
    batch_size: int | None = None,
) -> ScoredSet:
    """The labelled ``split`` for ``predictor``'s model and its probabilities on it."""
    table, images, source = load_eval_set(images_dir, labels_csv, predictor.spec, split, split_file, model_path,
                                          on_wrong_size)
    return ScoredSet(table, predict_all(predictor, images, batch_size), source)


def write_result(result: dict, path: str | Path, overwrite: bool = False) -> Path:
    """Write an evaluation result as JSON, atomically; an existing file only with ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists: pass --overwrite to replace it")
    with atomic_path(path, replace=overwrite) as tmp:
        tmp.write_text(json.dumps(result, indent=1) + "\n")
    return path
