"""Per-class thresholds on synthetic problems whose best thresholds are known."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import fbeta_score

from model.calibrate import GRID, calibrate, crossfit
from model.metrics import fbeta


def separable(thresholds, n=400, seed=0):
    """Label j's positives score in [t_j, 1] (one exactly t_j), its negatives in [0, t_j - 0.006].

    Only t_j on the 0.01 grid separates them, so it is the one best threshold
    for F1 and F2 alike.  Every image has a label (as every Planet chip has a
    weather tag), so perfect tags score samples-F = 1.
    """
    rng = np.random.default_rng(seed)
    t = np.asarray(thresholds, dtype=np.float64)
    y = rng.random((n, len(t))) < 0.4
    y[~y.any(1), 0] = True
    pos = t + rng.random(y.shape) * (1 - t)
    for j in range(len(t)):
        pos[np.flatnonzero(y[:, j])[0], j] = t[j]
    neg = rng.random(y.shape) * (t - 0.006)
    return y, np.where(y, pos, neg).astype(np.float64)


@pytest.mark.parametrize("metric", ["f1", "f2"])
def test_recovers_known_thresholds(metric):
    truth = [0.3, 0.55, 0.8, 0.07]
    y, p = separable(truth)
    cal = calibrate(y, p, metric=metric, min_support=5)
    np.testing.assert_allclose(cal.thresholds, truth)
    assert cal.after["samples"] == pytest.approx(1.0)
    assert cal.reasons == ["calibrated"] * 4


def test_matches_brute_force_on_noisy_problem():
    rng = np.random.default_rng(1)
    y = rng.random((300, 3)) < [0.5, 0.2, 0.1]
    p = np.clip(0.35 * y + rng.normal(0.3, 0.2, y.shape), 0.001, 0.999).astype(np.float32)
    cal = calibrate(y, p, metric="f2", min_support=5)
    for j in range(3):
        brute = max(fbeta_score(y[:, j], p[:, j] >= t, beta=2, zero_division=0) for t in GRID)
        got = fbeta_score(y[:, j], p[:, j] >= cal.thresholds[j], beta=2, zero_division=0)
        if cal.reasons[j] == "calibrated":
            assert got == pytest.approx(brute, abs=1e-12)


def test_min_support_keeps_global():
    y, p = separable([0.3, 0.6])
    y[:, 1] = False
    y[:3, 1] = True  # 3 positives < 5
    cal = calibrate(y, p, "f1", global_threshold=0.2, min_support=5)
    assert cal.thresholds[1] == 0.2
    assert cal.reasons[1] == "min-support"


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("metric", ["f1", "f2"])
def test_never_worse_than_global(seed, metric):
    rng = np.random.default_rng(seed)
    n, labels = 60, 6
    y = rng.random((n, labels)) < rng.uniform(0.05, 0.5, labels)
    p = np.clip(0.2 * y + rng.random(y.shape) * 0.8, 0.001, 0.999).astype(np.float32)
    cal = calibrate(y, p, metric, global_threshold=0.2, min_support=3)
    beta = {"f1": 1.0, "f2": 2.0}[metric]
    glob = p >= 0.2
    calp = p >= cal.thresholds[None, :]
    assert fbeta(y, calp, beta, "samples") >= fbeta(y, glob, beta, "samples") - 1e-12
    assert fbeta(y, calp, beta, "macro") >= fbeta(y, glob, beta, "macro") - 1e-12
    assert cal.after["samples"] >= cal.before["samples"] - 1e-12


def test_crossfit_reports_both():
    y, p = separable([0.3, 0.6, 0.5], n=200)
    res = crossfit(y, p, "f2", min_support=5)
    assert set(res) >= {"global", "calibrated"}
    assert res["calibrated"]["samples"] >= 0.95
    assert res["calibrated"]["macro"] >= res["global"]["macro"]


def test_bad_metric():
    with pytest.raises(ValueError, match="f3"):
        calibrate(np.zeros((4, 2)), np.zeros((4, 2)), metric="f3")
