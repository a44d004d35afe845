"""Metrics against scikit-learn on random multi-label data."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import fbeta_score, precision_recall_fscore_support

from scenetag.model.training.metrics import evaluate, fbeta, format_table, per_class


def random_problem(seed: int, n: int = 60, labels: int = 7):
    rng = np.random.default_rng(seed)
    y = rng.random((n, labels)) < rng.uniform(0.05, 0.6, labels)
    pred = rng.random((n, labels)) < 0.3
    y[:, -1] = False  # a label with no positives
    pred[:3] = False  # images with nothing predicted
    y[3:5] = False
    pred[3:5] = False  # images with nothing true and nothing predicted
    return y, pred


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("average", ["micro", "macro", "samples"])
@pytest.mark.parametrize("beta", [1.0, 2.0])
def test_fbeta_matches_sklearn(seed, average, beta):
    y, pred = random_problem(seed)
    expected = fbeta_score(y, pred, beta=beta, average=average, zero_division=0)
    assert fbeta(y, pred, beta, average) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_per_class_matches_sklearn(seed):
    y, pred = random_problem(seed)
    p, r, f, s = precision_recall_fscore_support(y, pred, average=None, zero_division=0)
    _, _, f2, _ = precision_recall_fscore_support(y, pred, beta=2.0, average=None, zero_division=0)
    got = per_class(y, pred)
    np.testing.assert_allclose(got["precision"], p)
    np.testing.assert_allclose(got["recall"], r)
    np.testing.assert_allclose(got["f1"], f)
    np.testing.assert_allclose(got["f2"], f2)
    np.testing.assert_array_equal(got["support"], s)


def test_evaluate_thresholds_and_supported_macro():
    rng = np.random.default_rng(0)
    y = rng.random((80, 4)) < [0.5, 0.3, 0.02, 0.4]
    y[:, 2] = False
    y[:2, 2] = True  # 2 positives: below min_support 5
    probs = np.clip(y * 0.6 + rng.random(y.shape) * 0.5, 0, 1).astype(np.float32)
    labels = ["a", "b", "rare", "d"]
    res = evaluate(y, probs, [0.3, 0.5, 0.5, 0.7], labels, min_support=5)
    pred = probs >= np.array([0.3, 0.5, 0.5, 0.7])
    assert res["samples_f2"] == pytest.approx(fbeta_score(y, pred, beta=2, average="samples", zero_division=0))
    f1 = precision_recall_fscore_support(y, pred, average=None, zero_division=0)[2]
    assert res["macro_f1_supported"] == pytest.approx(f1[[0, 1, 3]].mean())
    assert res["supported_labels"] == ["a", "b", "d"]
    assert res["per_class"]["rare"]["support"] == 2
    table = format_table(res)
    assert "rare" in table and "samples_f2" in table


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="same"):
        fbeta(np.zeros((3, 2)), np.zeros((3, 3)), 1.0, "micro")
