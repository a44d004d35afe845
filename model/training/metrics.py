"""Multi-label metrics: per-class P/R/F1/support; micro, macro and samples F1/F2.

Samples-F2 (F-beta with beta=2 per image, averaged over images) is the Kaggle
"Planet: Understanding the Amazon from Space" metric.  Conventions follow
scikit-learn's ``zero_division=0``: a ratio with an empty denominator is 0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from scenetag.model.structure import LabelStructure


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def fbeta_from_counts(tp, fp, fn, beta: float) -> np.ndarray:
    """F-beta from true-positive, false-positive and false-negative counts (0 where undefined)."""
    b2 = beta * beta
    tp, fp, fn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn))
    return _div((1 + b2) * tp, (1 + b2) * tp + b2 * fn + fp)


def _check(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true).astype(bool)
    y_pred = np.asarray(y_pred).astype(bool)
    if y_true.shape != y_pred.shape or y_true.ndim != 2:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} must be the same (N, L) shape")
    return y_true, y_pred


def fbeta(y_true: np.ndarray, y_pred: np.ndarray, beta: float, average: str) -> float:
    """F-beta of boolean ``(N, L)`` matrices with ``average`` "micro", "macro" or "samples"."""
    y_true, y_pred = _check(y_true, y_pred)
    tp = y_true & y_pred
    fp = ~y_true & y_pred
    fn = y_true & ~y_pred
    if average == "micro":
        return float(fbeta_from_counts(tp.sum(), fp.sum(), fn.sum(), beta))
    if average == "macro":
        return float(fbeta_from_counts(tp.sum(0), fp.sum(0), fn.sum(0), beta).mean())
    if average == "samples":
        return float(fbeta_from_counts(tp.sum(1), fp.sum(1), fn.sum(1), beta).mean())
    raise ValueError(f"average {average!r} is unknown: use micro, macro or samples")


def per_class(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class precision, recall, F1, F2, support and predicted counts."""
    y_true, y_pred = _check(y_true, y_pred)
    tp = (y_true & y_pred).sum(0)
    fp = (~y_true & y_pred).sum(0)
    fn = (y_true & ~y_pred).sum(0)
    return {
        "precision": _div(tp, tp + fp),
        "recall": _div(tp, tp + fn),
        "f1": fbeta_from_counts(tp, fp, fn, 1.0),
        "f2": fbeta_from_counts(tp, fp, fn, 2.0),
        "support": y_true.sum(0).astype(int),
        "predicted": y_pred.sum(0).astype(int),
    }


def evaluate(
    y_true: np.ndarray,
    probs: np.ndarray,
    thresholds: float | Sequence[float] | np.ndarray,
    labels: Sequence[str],
    min_support: int = 5,
    structure: "LabelStructure | None" = None,
    groups: "dict[str, Sequence[str]] | None" = None,
) -> dict:
    """All metrics of probabilities at thresholds, as a JSON-ready dict.

    ``macro_f1_supported`` is macro-F1 over labels with at least
    ``min_support`` positives in ``y_true``.  With a ``structure`` the tags are
    those of the spec (thresholds, then the structure), and the result also
    counts chips whose exclusive groups do not hold exactly one tag (``groups``:
    the groups to count without applying them; default the structure's, else
    Planet's weather where the labels have it).
    """
    probs = np.asarray(probs, dtype=np.float32)
    thr = np.broadcast_to(np.asarray(thresholds, dtype=np.float32), (probs.shape[1],))
    y_pred = probs >= thr[None, :]
    if structure:
        y_pred = structure.apply(y_pred, probs, labels)
    y_true = np.asarray(y_true).astype(bool)
    pc = per_class(y_true, y_pred)
    supported = pc["support"] >= min_support
    out = {
        "n_images": int(len(y_true)),
        "thresholds": {lab: float(t) for lab, t in zip(labels, thr)},
        "micro_f1": fbeta(y_true, y_pred, 1.0, "micro"),
        "macro_f1": fbeta(y_true, y_pred, 1.0, "macro"),
        "samples_f1": fbeta(y_true, y_pred, 1.0, "samples"),
        "micro_f2": fbeta(y_true, y_pred, 2.0, "micro"),
        "macro_f2": fbeta(y_true, y_pred, 2.0, "macro"),
        "samples_f2": fbeta(y_true, y_pred, 2.0, "samples"),
        "min_support": int(min_support),
        "macro_f1_supported": float(pc["f1"][supported].mean()) if supported.any() else 0.0,
        "supported_labels": [lab for lab, s in zip(labels, supported) if s],
        "structured": bool(structure),
        "groups_not_one": _groups_not_one(y_pred, labels, groups if groups is not None else
                                          (structure.exclusive if structure else None)),
        "per_class": {
            lab: {k: (int(v[j]) if k in ("support", "predicted") else float(v[j])) for k, v in pc.items()}
            for j, lab in enumerate(labels)
        },
    }
    return out


def _groups_not_one(y_pred: np.ndarray, labels: Sequence[str], groups: "dict | None") -> dict:
    """Per exclusive group (Planet's weather by default), chips tagged with no label or more than one of it."""
    from scenetag.model.structure import PLANET_WEATHER

    groups = dict(groups) if groups else ({"weather": PLANET_WEATHER} if set(PLANET_WEATHER) <= set(labels) else {})
    index = {lab: j for j, lab in enumerate(labels)}
    return {name: int((y_pred[:, [index[lab] for lab in group]].sum(1) != 1).sum()) for name, group in groups.items()}


SUMMARY_KEYS = ("samples_f2", "samples_f1", "micro_f1", "micro_f2", "macro_f1", "macro_f2", "macro_f1_supported")


def format_table(result: dict) -> str:
    """A readable per-class table and summary of an :func:`evaluate` result."""
    lines = [f"{'label':<20} {'thr':>5} {'prec':>6} {'rec':>6} {'f1':>6} {'f2':>6} {'support':>7} {'pred':>5}"]
    for lab, row in result["per_class"].items():
        lines.append(
            f"{lab:<20} {result['thresholds'][lab]:>5.2f} {row['precision']:>6.3f} {row['recall']:>6.3f} "
            f"{row['f1']:>6.3f} {row['f2']:>6.3f} {row['support']:>7d} {row['predicted']:>5d}"
        )
    lines.append("")
    for key in SUMMARY_KEYS:
        label = key if key != "macro_f1_supported" else f"macro_f1 (support>={result['min_support']})"
        lines.append(f"{label:<28} {result[key]:.4f}")
    for name, n in result.get("groups_not_one", {}).items():
        lines.append(f"{'chips without one ' + name + ' tag':<28} {n}")
    lines.append(f"{'images':<28} {result['n_images']}")
    return "\n".join(lines)
