"""Per-class thresholds that maximise F1 or F2 on validation probabilities.

Rules:

* Each label's threshold maximises that label's F-beta over a grid of
  0.01 steps within ``bounds`` (default 0.05 .. 0.95: on a few hundred
  validation images a threshold in the outer 5 % rests on one or two chips
  in the tail and does not carry over).  Ties go to the middle of the best
  thresholds, which is the most stable choice on a small validation set.
* Min-support: a label with fewer than ``min_support`` validation positives
  keeps the global threshold; a handful of positives cannot place a threshold.
* Never worse than global: per-class F-beta is never worse by construction
  (the global threshold is on the grid).  If the chosen thresholds would
  lower samples-F-beta (the per-image metric, Kaggle's with beta=2) below
  the global threshold's, labels are put back to the global threshold one at
  a time, each time the one whose reversion helps most, until it is not.
* Structure: with the spec's label structure, tags are scored as the spec
  makes them (thresholds, then one label per exclusive group, suppressed labels
  removed).  Labels of an exclusive group keep the global threshold (the group
  takes its highest label whatever the thresholds); the others are searched on
  the chips where they are not suppressed.
* Honesty: fitting and scoring on the same chips flatters the thresholds, so
  :func:`crossfit` fits on some folds and scores on the others; where that says
  per-class thresholds do not beat the global one, :func:`calibrate_model`
  keeps the global threshold (unless told to keep the per-class ones).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from scenetag.errors import OptionError, OutputExistsError
from scenetag.model.backends.registry import backend_for, suffixes_of
from scenetag.model.spec import ModelSpec
from scenetag.model.structure import LabelStructure
from scenetag.model.training.data import LabelTable
from scenetag.model.training.metrics import fbeta, fbeta_from_counts

log = logging.getLogger(__name__)

METRICS = {"f1": 1.0, "f2": 2.0}
GRID = np.round(np.arange(0.01, 1.0, 0.01), 2)
DEFAULT_GLOBAL = 0.2
DEFAULT_MIN_SUPPORT = 5
DEFAULT_BOUNDS = (0.05, 0.95)


def grid_within(bounds: tuple[float, float] = DEFAULT_BOUNDS) -> np.ndarray:
    """The threshold grid restricted to ``[low, high]``."""
    lo, hi = bounds
    if not 0 < lo <= hi < 1:
        raise ValueError(f"threshold bounds {bounds} must satisfy 0 < low <= high < 1")
    return GRID[(GRID >= lo - 1e-9) & (GRID <= hi + 1e-9)]


@dataclass
class Calibration:
    """Calibrated thresholds and the before/after numbers."""

    thresholds: np.ndarray
    metric: str
    global_threshold: float
    min_support: int
    #: Why each label has its threshold: "calibrated", "min-support" or "reverted".
    reasons: list[str] = field(default_factory=list)
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    bounds: tuple[float, float] = DEFAULT_BOUNDS

    def to_dict(self, labels: Sequence[str]) -> dict:
        return {
            "metric": self.metric,
            "global_threshold": self.global_threshold,
            "min_support": self.min_support,
            "bounds": list(self.bounds),
            "thresholds": {lab: float(t) for lab, t in zip(labels, self.thresholds)},
            "reasons": dict(zip(labels, self.reasons)),
            "before": self.before,
            "after": self.after,
        }


def best_threshold(y: np.ndarray, p: np.ndarray, beta: float, grid: np.ndarray = GRID) -> tuple[float, float]:
    """Threshold on ``grid`` maximising F-beta of one label, and that F-beta."""
    y = np.asarray(y).astype(bool)
    pred = np.asarray(p)[:, None] >= grid[None, :]
    tp = (pred & y[:, None]).sum(0)
    fp = (pred & ~y[:, None]).sum(0)
    fn = y.sum() - tp
    scores = fbeta_from_counts(tp, fp, fn, beta)
    best = scores.max()
    winners = np.flatnonzero(np.isclose(scores, best, rtol=0, atol=1e-12))
    t = float(grid[winners[len(winners) // 2]])
    return t, float(best)


#: What ``calibrate --choose`` accepts: keep per-class thresholds only where cross-fitting says they help.
CHOICES = ("auto", "per-class", "global")


def _tags(probs: np.ndarray, thr: np.ndarray, structure: LabelStructure | None,
          labels: Sequence[str] | None) -> np.ndarray:
    pred = probs >= np.asarray(thr)[None, :]
    return structure.apply(pred, probs, labels) if structure else pred


def _summary(y: np.ndarray, probs: np.ndarray, thr: np.ndarray, beta: float,
             structure: LabelStructure | None = None, labels: Sequence[str] | None = None) -> dict:
    pred = _tags(probs, thr, structure, labels)
    return {
        "samples": fbeta(y, pred, beta, "samples"),
        "macro": fbeta(y, pred, beta, "macro"),
        "micro": fbeta(y, pred, beta, "micro"),
    }


def calibrate(
    y_true: np.ndarray,
    probs: np.ndarray,
    metric: str = "f2",
    global_threshold: float = DEFAULT_GLOBAL,
    min_support: int = DEFAULT_MIN_SUPPORT,
    bounds: tuple[float, float] = DEFAULT_BOUNDS,
    structure: LabelStructure | None = None,
    labels: Sequence[str] | None = None,
) -> Calibration:
    """Per-class thresholds for ``probs`` ``(N, L)`` against 0/1 ``y_true`` (tags made with ``structure``)."""
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is unknown: use one of {sorted(METRICS)}")
    beta = METRICS[metric]
    y = np.asarray(y_true).astype(bool)
    probs = np.asarray(probs, dtype=np.float32)
    if y.shape != probs.shape:
        raise ValueError(f"targets {y.shape} and probabilities {probs.shape} differ in shape")
    n_labels = probs.shape[1]
    glob = np.full(n_labels, global_threshold, dtype=np.float64)
    thr = glob.copy()
    reasons = []
    grid = grid_within(bounds)
    if not bounds[0] <= global_threshold <= bounds[1]:
        raise ValueError(f"global threshold {global_threshold} lies outside the bounds {bounds}")
    support = y.sum(0)
    structure = structure if structure else None
    if structure is not None and labels is None:
        raise ValueError("a label structure needs the labels")
    grouped = {lab for group in structure.exclusive.values() for lab in group} if structure else set()
    searched = probs
    if structure is not None:
        # Search each label on the chips where the structure lets it be tagged: suppressors decided at the
        # global threshold (or by their group), every other label switched on, so only suppression bites.
        base = probs >= glob[None, :]
        base[:, [j for j, lab in enumerate(labels) if lab not in structure.suppresses]] = True
        searched = np.where(structure.apply(base, probs, labels), probs, -1.0)
    for j in range(n_labels):
        if labels is not None and labels[j] in grouped:
            reasons.append("exclusive")
            continue
        if support[j] < min_support:
            reasons.append("min-support")
            continue
        thr[j], _ = best_threshold(y[:, j], searched[:, j], beta, grid)
        reasons.append("calibrated")
    before = _summary(y, probs, glob, beta, structure, labels)
    after = _summary(y, probs, thr, beta, structure, labels)
    # Never worse than global on samples-F-beta: revert the most helpful label until it is not.
    while after["samples"] < before["samples"] - 1e-12:
        candidates = [j for j in range(n_labels) if thr[j] != glob[j]]
        scores = []
        for j in candidates:
            trial = thr.copy()
            trial[j] = glob[j]
            scores.append(_summary(y, probs, trial, beta, structure, labels)["samples"])
        j = candidates[int(np.argmax(scores))]
        thr[j] = glob[j]
        reasons[j] = "reverted"
        after = _summary(y, probs, thr, beta, structure, labels)
        log.info("reverted label %d to the global threshold; samples-%s %.4f", j, metric, after["samples"])
    return Calibration(thr, metric, global_threshold, min_support, reasons, before, after, tuple(bounds))


def crossfit(
    y_true: np.ndarray,
    probs: np.ndarray,
    metric: str = "f2",
    global_threshold: float = DEFAULT_GLOBAL,
    min_support: int = DEFAULT_MIN_SUPPORT,
    folds: int = 2,
    seed: int = 0,
    bounds: tuple[float, float] = DEFAULT_BOUNDS,
    repeats: int = 10,
    structure: LabelStructure | None = None,
    labels: Sequence[str] | None = None,
) -> dict:
    """Out-of-fold estimate of calibration: thresholds fit on some folds, scored on the held-out one.

    Calibrating and scoring on the same images flatters the thresholds; this
    gives the honest figure to report next to it.  The images are split
    ``repeats`` times (seeds ``seed ..``) into ``folds`` folds; returns the mean
    over all held-out folds of samples/macro/micro F-beta at the global and at
    the calibrated thresholds, the mean calibrated-minus-global samples
    difference and its spread (standard deviation over repeats), and
    ``per_class_helps``: whether that difference is positive, i.e. whether
    per-class thresholds beat the global one on chips they were not fitted on.
    """
    beta = METRICS[metric]
    y = np.asarray(y_true).astype(bool)
    probs = np.asarray(probs, dtype=np.float32)
    rows = {"global": [], "calibrated": []}
    diffs = []
    for r in range(repeats):
        fold_of = np.random.default_rng(seed + r).permutation(len(y)) % folds
        start = len(rows["global"])
        for k in range(folds):
            fit, held = fold_of != k, fold_of == k
            cal = calibrate(y[fit], probs[fit], metric, global_threshold, max(1, min_support // folds), bounds,
                            structure, labels)
            rows["global"].append(_summary(y[held], probs[held], np.full(y.shape[1], global_threshold), beta,
                                           structure, labels))
            rows["calibrated"].append(_summary(y[held], probs[held], cal.thresholds, beta, structure, labels))
        diffs.append(np.mean([c["samples"] - g["samples"] for c, g in
                              zip(rows["calibrated"][start:], rows["global"][start:])]))
    return {
        name: {key: float(np.mean([r[key] for r in rs])) for key in rs[0]} for name, rs in rows.items()
    } | {"folds": folds, "repeats": repeats, "metric": metric, "samples_diff": float(np.mean(diffs)),
         "samples_diff_sd": float(np.std(diffs)), "per_class_helps": bool(np.mean(diffs) > 0)}


#: What of the calibration record is stored in the new spec's ``extra["calibration"]``.
SPEC_RECORD_KEYS = ("metric", "global_threshold", "min_support", "bounds", "split", "n_images", "before", "after",
                    "reasons", "crossfit", "chosen", "tta", "structured")


@dataclass
class CalibratedModel:
    """A model's calibration: the new spec, the report, and how to write the calibrated model."""

    #: The model file that was calibrated.
    source: Path
    calibration: Calibration
    #: The model's spec with the calibrated thresholds and ``extra["calibration"]``.
    spec: ModelSpec
    #: The report (thresholds, reasons, before/after, cross-fitted estimate, split...), JSON-ready.
    record: dict
    #: The torch network, where the model ran on the torch backend (it is saved with the new spec).
    network: Any = None

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the model with the calibrated spec to ``path``, in the source's format, atomically."""
        path = Path(path)
        check_output(self.source, path, overwrite)
        if self.network is not None:
            from scenetag.model.training.checkpoint import save_checkpoint

            save_checkpoint(path, self.network, self.spec, replace=overwrite)
        else:
            from scenetag.model.training.export import rewrite_onnx_spec

            rewrite_onnx_spec(self.source, path, self.spec, replace=overwrite)
        self.record["out"] = str(path)
        return path


def check_output(source: str | Path, path: str | Path, overwrite: bool = False) -> None:
    """Refuse ``path`` for the calibrated copy of ``source``: an existing file without ``overwrite``, or a wrong suffix."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists: pass --overwrite to replace it")
    if backend_for(source) == "torch" and backend_for(path) != "torch":
        suffixes = ", ".join(suffixes_of("torch"))
        raise OptionError(f"MODEL is a checkpoint: --output needs one of {suffixes}, got {path.name}")


def calibrate_model(
    predictor: Any,
    table: LabelTable,
    probs: np.ndarray,
    split: str,
    split_source: str,
    metric: str = "f2",
    global_threshold: float = DEFAULT_GLOBAL,
    min_support: int = DEFAULT_MIN_SUPPORT,
    bounds: tuple[float, float] = DEFAULT_BOUNDS,
    choose: str = "auto",
) -> CalibratedModel:
    """Calibrate ``predictor``'s thresholds on ``probs`` of the labelled ``table`` (its ``split``).

    Tags are made with the spec's label structure; ``probs`` were made with the
    spec's TTA, which the new spec records.  ``choose``: "per-class" keeps the
    fitted thresholds, "global" the global one, "auto" the fitted ones only
    where cross-fitting says they beat the global one.
    """
    if choose not in CHOICES:
        raise OptionError(f"--choose {choose!r} is unknown: use one of {', '.join(CHOICES)}")
    spec0 = predictor.spec
    structure, labels = spec0.structure or None, spec0.labels
    cal = calibrate(table.targets, probs, metric, global_threshold, min_support, bounds, structure, labels)
    fitted = crossfit(table.targets, probs, metric, global_threshold, min_support, bounds=bounds,
                      structure=structure, labels=labels)
    per_class = choose == "per-class" or (choose == "auto" and fitted["per_class_helps"])
    chosen = "per-class" if per_class else "global"
    thresholds = list(cal.thresholds) if per_class else [global_threshold] * len(labels)
    record = cal.to_dict(labels) | {
        "split": split, "split_source": split_source, "n_images": len(table),
        "support": table.counts(), "crossfit": fitted, "chosen": chosen, "tta": spec0.tta,
        "structured": bool(structure),
        "chosen_thresholds": dict(zip(labels, map(float, thresholds))),
    }
    spec = spec0.with_thresholds(thresholds)
    spec = replace(spec, extra={**spec.extra, "calibration": {k: record[k] for k in SPEC_RECORD_KEYS}})
    source = Path(predictor.path)
    # The torch backend's network, whatever the checkpoint's suffix (an ONNX predictor has none).
    network = getattr(predictor, "model", None)
    return CalibratedModel(source, cal, spec, record, network)
