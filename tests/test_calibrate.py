"""Per-class thresholds on synthetic problems whose best thresholds are known."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import fbeta_score

from scenetag.model.training.calibrate import calibrate, crossfit, grid_within
from scenetag.model.training.metrics import fbeta


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
    assert "calibrated" in cal.reasons, "nothing left to compare with the brute force"
    for j in range(3):
        brute = max(fbeta_score(y[:, j], p[:, j] >= t, beta=2, zero_division=0) for t in grid_within())
        got = fbeta_score(y[:, j], p[:, j] >= cal.thresholds[j], beta=2, zero_division=0)
        if cal.reasons[j] == "calibrated":
            assert got == pytest.approx(brute, abs=1e-12)


def test_bounds_limit_the_search():
    y, p = separable([0.02, 0.5, 0.98])
    cal = calibrate(y, p, "f1", min_support=5, bounds=(0.05, 0.95))
    np.testing.assert_allclose(cal.thresholds, [0.05, 0.5, 0.95])
    cal = calibrate(y, p, "f1", min_support=5, bounds=(0.01, 0.99))
    np.testing.assert_allclose(cal.thresholds, [0.02, 0.5, 0.98])


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


def test_crossfit_repeats_are_single_splits_averaged():
    """``repeats`` splits with seeds ``seed ..``: the means are those of the single splits, the spread theirs too."""
    y, p = separable([0.3, 0.6, 0.5], n=120, seed=2)
    p = np.clip(p + np.random.default_rng(3).normal(0, 0.15, p.shape), 0, 1)  # noisy, so splits differ
    res = crossfit(y, p, "f2", min_support=5, seed=4, repeats=3)
    singles = [crossfit(y, p, "f2", min_support=5, seed=4 + r, repeats=1) for r in range(3)]
    assert res["repeats"] == 3 and res["folds"] == 2
    for name in ("global", "calibrated"):
        for key in ("samples", "macro", "micro"):
            assert res[name][key] == pytest.approx(np.mean([s[name][key] for s in singles]), abs=1e-12)
    diffs = [s["calibrated"]["samples"] - s["global"]["samples"] for s in singles]
    assert res["samples_diff_sd"] == pytest.approx(np.std(diffs), abs=1e-12)
    assert res["samples_diff_sd"] > 0
    assert all(s["samples_diff_sd"] == 0 for s in singles)


def test_bad_metric():
    with pytest.raises(ValueError, match="f3"):
        calibrate(np.zeros((4, 2)), np.zeros((4, 2)), metric="f3")


# -- evaluate and calibrate commands on real chips ------------------------------
def _small_run(tmp_path, n=40):
    """A small checkpoint trained on nothing, with the split of a 40-chip label set beside it."""
    from scenetag.model.training.checkpoint import save_checkpoint
    from scenetag.model.training.data import make_split, read_labels, write_split
    from tests.model_fixtures import SMALL_LABELS, planet_subset, small_model, small_spec

    images, csv = planet_subset(tmp_path, n, labels=SMALL_LABELS)
    table = read_labels(csv, SMALL_LABELS)
    split = make_split(table, 0.5, seed=0)
    run = tmp_path / "run"
    run.mkdir()
    write_split(split, run / "split.json")
    spec = small_spec(extra={"split": {k: split[k] for k in ("seed", "val_fraction", "data_digest")}})
    ckpt = save_checkpoint(run / "best.pt", small_model(spec), spec)
    return images, csv, ckpt, split


def test_evaluate_command_on_val_split(tmp_path):
    import json

    from click.testing import CliRunner

    from scenetag.commands.evaluate import command

    images, csv, ckpt, split = _small_run(tmp_path)
    res = CliRunner().invoke(command, [str(ckpt), str(images), "--labels", str(csv), "--resize",
                                       "--format", "json", "--json-out", str(tmp_path / "e.json")])
    assert res.exit_code == 0, res.output
    result = json.loads(res.output)
    assert result["n_images"] == len(split["val"]) and result["split"] == "val"
    assert "split.json" in result["split_source"]
    assert 0 <= result["samples_f2"] <= 1 and set(result["per_class"]) == {"clear", "cloudy", "haze", "primary", "water"}
    assert json.loads((tmp_path / "e.json").read_text())["samples_f2"] == result["samples_f2"]
    table = CliRunner().invoke(command, [str(ckpt), str(images), "--labels", str(csv), "--resize"])
    assert table.exit_code == 0 and "samples_f2" in table.output and "primary" in table.output


def test_evaluate_rebuilds_split_from_spec_seed(tmp_path):
    import json

    from click.testing import CliRunner

    from scenetag.commands.evaluate import command

    images, csv, ckpt, split = _small_run(tmp_path)
    args = [str(ckpt), str(images), "--labels", str(csv), "--resize", "--format", "json"]
    from_file = CliRunner().invoke(command, args)
    assert from_file.exit_code == 0, from_file.output
    (ckpt.parent / "split.json").unlink()
    res = CliRunner().invoke(command, args)
    assert res.exit_code == 0, res.output
    assert "recomputed" in res.output
    a, b = json.loads(from_file.output), json.loads(res.output)
    # The rebuilt split is train's: the same validation chips, so the same scores.
    assert b["n_images"] == a["n_images"] == len(split["val"])
    assert b["samples_f2"] == a["samples_f2"] and b["per_class"] == a["per_class"]


def test_evaluate_refuses_split_of_other_data(tmp_path):
    from click.testing import CliRunner

    from scenetag.commands.evaluate import command

    images, csv, ckpt, _ = _small_run(tmp_path)
    (ckpt.parent / "split.json").unlink()
    csv.write_text("\n".join(csv.read_text().splitlines()[:-3]) + "\n")  # other data
    res = CliRunner().invoke(command, [str(ckpt), str(images), "--labels", str(csv), "--resize"])
    assert res.exit_code == 1 and "other labelled data" in res.output


def test_calibrate_command_writes_model_with_thresholds(tmp_path):
    import json

    from click.testing import CliRunner

    from scenetag.model.training.checkpoint import load_checkpoint
    from scenetag.commands.calibrate import command

    images, csv, ckpt, split = _small_run(tmp_path)
    out = tmp_path / "cal.pt"
    res = CliRunner().invoke(command, [str(ckpt), str(images), "--labels", str(csv), "--resize", "--metric", "f1",
                                       "--min-support", "3", "--out", str(out)])
    assert res.exit_code == 0, res.output
    record = json.loads(res.output[: res.output.rindex("}") + 1])
    assert record["after"]["samples"] >= record["before"]["samples"]
    assert record["n_images"] == len(split["val"])
    _, spec, _ = load_checkpoint(out)
    assert list(spec.thresholds) == [record["thresholds"][lab] for lab in spec.labels]
    assert spec.extra["calibration"]["metric"] == "f1"
    again = CliRunner().invoke(command, [str(ckpt), str(images), "--labels", str(csv), "--resize", "--out", str(out)])
    assert again.exit_code == 1 and "--overwrite" in again.output


def test_a_calibrated_copy_is_refused_where_it_exists_or_has_the_wrong_format(tmp_path):
    from scenetag.errors import OptionError, OutputExistsError
    from scenetag.model.training.calibrate import check_output

    taken = tmp_path / "taken.onnx"
    taken.write_bytes(b"x")
    with pytest.raises(OutputExistsError, match="pass --overwrite"):
        check_output(tmp_path / "m.onnx", taken)
    check_output(tmp_path / "m.onnx", taken, overwrite=True)
    with pytest.raises(OptionError, match=r"needs one of \.pt, \.pth, \.ckpt, got m2\.onnx"):
        check_output(tmp_path / "m.pt", tmp_path / "m2.onnx")
    check_output(tmp_path / "m.pt", tmp_path / "m2.ckpt")


def test_calibrate_model_records_the_calibration_in_the_new_spec(tiny_model):
    from scenetag.model.backends import create_predictor
    from scenetag.model.training.calibrate import calibrate_model
    from scenetag.model.training.data import LabelTable

    pred = create_predictor(tiny_model)
    rng = np.random.default_rng(3)
    n, labels = 40, pred.spec.labels
    targets = rng.random((n, len(labels))) < 0.5
    probs = np.clip(targets * 0.6 + rng.random(targets.shape) * 0.4, 0, 1).astype(np.float32)
    table = LabelTable(tuple(f"c{i}" for i in range(n)), labels, targets.astype(np.uint8))
    result = calibrate_model(pred, table, probs, "val", "test", min_support=3)
    assert result.network is None and result.source == tiny_model
    assert result.spec.thresholds == tuple(result.calibration.thresholds)
    stored = result.spec.extra["calibration"]
    assert stored["split"] == "val" and stored["n_images"] == n and set(stored) >= {"before", "after", "reasons"}
    assert result.record["split_source"] == "test" and "crossfit" in result.record


# -- cross-fitting: what calibration is worth on chips it was not fitted on ---------------------------


def test_crossfit_says_per_class_helps_where_the_best_thresholds_are_known():
    truth = [0.3, 0.55, 0.8, 0.07]
    y, p = separable(truth, n=400)
    cf = crossfit(y, p, "f2", 0.2, 5)
    assert cf["per_class_helps"] and cf["samples_diff"] > 0.02
    assert cf["calibrated"]["samples"] > 0.99 > cf["global"]["samples"]


def test_crossfit_says_per_class_only_overfits_noise_and_calibrate_model_keeps_the_global_threshold(tmp_path):
    from types import SimpleNamespace

    from scenetag.model.spec import ModelSpec
    from scenetag.model.training.calibrate import calibrate_model
    from scenetag.model.training.data import LabelTable

    from scenetag.model.training.calibrate import best_threshold

    labels = ("a", "b", "c", "d", "e", "f")

    def draw(n, rng):  # every label alike: one threshold is the best for all of them
        y = rng.random((n, len(labels))) < 0.3
        return y, np.clip(0.35 * y + rng.normal(0.3, 0.15, y.shape), 0.01, 0.99)
    big_y, big_p = draw(20000, np.random.default_rng(99))
    best, _ = best_threshold(big_y.ravel(), big_p.ravel(), 2.0, grid_within())  # the population's best
    y, p = draw(80, np.random.default_rng(0))  # a small validation set: per-class thresholds fit its noise
    cal = calibrate(y, p, "f2", best, 5)
    cf = crossfit(y, p, "f2", best, 5)
    assert cal.after["samples"] > cal.before["samples"]  # in sample, it looks like a gain...
    assert not cf["per_class_helps"] and cf["samples_diff"] < 0  # ...that is not one
    predictor = SimpleNamespace(spec=ModelSpec.create("m", "a", labels, 0.2), path=str(tmp_path / "m.onnx"))
    table = LabelTable([f"i{i}" for i in range(len(y))], labels, y.astype(np.float32))
    auto = calibrate_model(predictor, table, p, "val", "test", global_threshold=best)
    assert auto.record["chosen"] == "global" and auto.spec.thresholds == (best,) * len(labels)
    forced = calibrate_model(predictor, table, p, "val", "test", global_threshold=best, choose="per-class")
    assert forced.record["chosen"] == "per-class" and forced.spec.thresholds == tuple(cal.thresholds)


def test_with_the_structure_exclusive_labels_keep_the_global_threshold_and_scores_are_structured():
    from scenetag.model.spec import PLANET_LABELS
    from scenetag.model.structure import planet_structure

    s = planet_structure(PLANET_LABELS)
    rng = np.random.default_rng(4)
    y = rng.random((200, 17)) < 0.2
    p = np.clip(0.5 * y + rng.random(y.shape) * 0.5, 0.01, 0.99)
    cal = calibrate(y, p, "f2", 0.2, 5, structure=s, labels=PLANET_LABELS)
    for lab in ("clear", "partly_cloudy", "haze", "cloudy"):
        j = PLANET_LABELS.index(lab)
        assert cal.reasons[j] == "exclusive" and cal.thresholds[j] == 0.2
    weather = [PLANET_LABELS.index(w) for w in ("clear", "partly_cloudy", "haze", "cloudy")]
    tags = s.apply(p >= cal.thresholds, p, PLANET_LABELS)
    assert (tags[:, weather].sum(1) == 1).all()
    assert cal.after["samples"] == pytest.approx(fbeta(y, tags, 2.0, "samples"))
