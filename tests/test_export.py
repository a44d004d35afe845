"""ONNX export round trip: torch vs ONNX Runtime, the spec in the metadata, the CLI, the default model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from scenetag.model.training.checkpoint import save_checkpoint
from scenetag.model.default import DEFAULT_MODEL
from scenetag.model.training.export import TOLERANCE, export_onnx, rewrite_onnx_spec
from scenetag.model.backends.onnx_backend import OnnxPredictor
from scenetag.model.backends.onnx_backend import read_onnx_spec
from scenetag.model.preprocess import normalize
from scenetag.model.spec import METADATA_KEY, PLANET_LABELS, ModelSpec
from scenetag.errors import OutputExistsError
from tests.model_fixtures import SMALL_ARCH, SMALL_LABELS, planet_or_skip, real_chips, small_model, small_spec


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    spec = small_spec(thresholds=[0.1, 0.2, 0.3, 0.4, 0.5])
    model = small_model(spec)
    path = tmp_path_factory.mktemp("onnx") / "small.onnx"
    report = export_onnx(model, spec, path)
    return model, spec, path, report


def onnx_probs(path, chips):
    """ONNX Runtime's probabilities for uint8 chips, through the job's own backend."""
    return OnnxPredictor(path).predict(chips)


def test_round_trip_on_random_chips(exported):
    model, spec, path, report = exported
    assert report["max_diff_random"] <= TOLERANCE
    x = np.random.default_rng(5).integers(0, 256, (3, 3, 64, 64), dtype=np.uint8)
    xn = normalize(x, spec)
    with torch.inference_mode():
        ref = torch.sigmoid(model(torch.from_numpy(xn))).numpy()
    got = onnx_probs(path, x)
    assert got.dtype == np.float32 and got.shape == (3, 5)
    assert np.abs(got - ref).max() <= TOLERANCE


def test_round_trip_on_real_chips(tmp_path):
    chips = real_chips(8, size=64)
    spec = small_spec()
    report = export_onnx(small_model(spec), spec, tmp_path / "m.onnx", real_chips=chips)
    assert report["n_real"] == 8 and report["max_diff_real"] <= TOLERANCE


def test_dynamic_batch_axis(exported):
    _, spec, path, _ = exported
    for n in (1, 7):
        x = np.zeros((n, 3, 64, 64), np.uint8)
        assert onnx_probs(path, x).shape == (n, 5)


def test_spec_in_metadata_and_checker(exported):
    import onnx

    _, spec, path, _ = exported
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    props = {p.key: p.value for p in proto.metadata_props}
    assert ModelSpec.from_json(props[METADATA_KEY]) == spec
    assert read_onnx_spec(path) == spec


def test_rewrite_spec_keeps_graph(exported, tmp_path):
    _, spec, path, _ = exported
    new = spec.with_thresholds(0.33)
    out = rewrite_onnx_spec(path, tmp_path / "cal.onnx", new)
    assert read_onnx_spec(out).thresholds == (0.33,) * 5
    x = np.full((1, 3, 64, 64), 128, np.uint8)
    np.testing.assert_array_equal(onnx_probs(out, x), onnx_probs(path, x))


def test_refuses_to_overwrite(exported):
    model, spec, path, _ = exported
    with pytest.raises(OutputExistsError, match="--overwrite"):
        export_onnx(model, spec, path)


def lightning_ckpt(tmp_path):
    model = small_model()
    sd = {f"model.{k}": v for k, v in model.state_dict().items()}
    path = tmp_path / "epoch=3-step=100.ckpt"
    torch.save({"state_dict": sd, "epoch": 3, "hyper_parameters": {}}, path)
    return model, path


def test_cli_exports_lightning_checkpoint(tmp_path):
    from scenetag.commands.export import command

    model, ckpt = lightning_ckpt(tmp_path)
    out = tmp_path / "l.onnx"
    res = CliRunner().invoke(command, [str(ckpt), "--out", str(out), "--arch", SMALL_ARCH,
                                       "--labels", ",".join(SMALL_LABELS), "--thresholds", "*=0.3,haze=0.6", "--name", "imported",
                                       "--chip-size", "64"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["max_diff"] <= TOLERANCE
    spec = read_onnx_spec(out)
    assert spec.name == "imported" and spec.labels == SMALL_LABELS and spec.chip_size == 64
    assert spec.thresholds == (0.3, 0.3, 0.6, 0.3, 0.3)
    x = np.random.default_rng(0).integers(0, 256, (2, 3, 64, 64), dtype=np.uint8)
    with torch.inference_mode():
        ref = torch.sigmoid(model.eval()(torch.from_numpy(normalize(x, spec)))).numpy()
    assert np.abs(onnx_probs(out, x) - ref).max() <= TOLERANCE


@pytest.mark.parametrize("thresholds, match", [("1.5", "must lie in"), ("haze=abc", "not a number"),
                                               ("nolabel=0.3", "unknown labels")])
def test_cli_bad_thresholds(tmp_path, thresholds, match):
    from scenetag.commands.export import command

    _, ckpt = lightning_ckpt(tmp_path)
    res = CliRunner().invoke(command, [str(ckpt), "--out", str(tmp_path / "x.onnx"), "--arch", SMALL_ARCH,
                                       "--labels", ",".join(SMALL_LABELS), "--thresholds", thresholds])
    assert res.exit_code != 0
    assert match in res.output
    assert not (tmp_path / "x.onnx").exists()


def test_cli_class_count_mismatch(tmp_path):
    from scenetag.commands.export import command

    _, ckpt = lightning_ckpt(tmp_path)
    res = CliRunner().invoke(command, [str(ckpt), "--out", str(tmp_path / "x.onnx"), "--arch", SMALL_ARCH,
                                       "--labels", "planet"])
    assert res.exit_code == 1
    assert "5 classes" in res.output and "17 labels" in res.output


def test_cli_exports_our_checkpoint_with_real_chip_check(tmp_path):
    from scenetag.commands.export import command

    root = planet_or_skip()
    spec = small_spec(labels=PLANET_LABELS, chip_size=64)
    ckpt = save_checkpoint(tmp_path / "best.pt", small_model(spec), spec)
    res = CliRunner().invoke(command, [str(ckpt), "--out", str(tmp_path / "m.onnx"),
                                       "--check-chips", str(root / "images"), "--n-check", "4"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["n_real"] == 4 and report["max_diff_real"] <= TOLERANCE


def test_default_model_is_shipped_and_runs():
    """The committed default model: Planet labels, 256 px RGB, its tagging from the study, and it tags real chips."""
    assert DEFAULT_MODEL.is_file(), f"{DEFAULT_MODEL} is missing: rebuild it with `make default-model`"
    spec = read_onnx_spec(DEFAULT_MODEL)
    assert spec.labels == PLANET_LABELS
    assert spec.bands == ("red", "green", "blue") and spec.chip_size == 256 and spec.scaling == "percentile"
    assert spec.arch == "tf_efficientnet_lite0"
    # Issue 14: one global threshold (cross-fitting found per-class thresholds no better), d4, Planet's structure.
    calibration = spec.extra["calibration"]
    assert calibration["chosen"] == "global" and set(spec.thresholds) == {calibration["global_threshold"]}
    assert calibration["samples_f2_cross_fitted"] < calibration["samples_f2_in_sample"]
    assert spec.tta == "d4" and spec.weather_labels == ("clear", "partly_cloudy", "haze", "cloudy")
    assert DEFAULT_MODEL.stat().st_size < 30e6
    chips = real_chips(8)
    probs = onnx_probs(DEFAULT_MODEL, chips)
    assert probs.shape == (8, 17) and np.isfinite(probs).all()
    # Every Planet chip has a weather tag; the model should find one on real chips.
    weather = [PLANET_LABELS.index(w) for w in ("clear", "cloudy", "haze", "partly_cloudy")]
    assert (probs[:, weather].max(1) > 0.5).mean() >= 0.75
    assert (spec.tags(probs)[:, weather].sum(1) == 1).all()  # exactly one weather tag per chip


@pytest.mark.slow
def test_lite0_export_round_trip_at_256(tmp_path):
    """The default architecture (TF 'same' padding) exports within tolerance at full size."""
    from scenetag.model.training.nets import build_model

    spec = ModelSpec.create("lite0", "tf_efficientnet_lite0", PLANET_LABELS, 0.2)
    model = build_model(spec, pretrained=True)
    report = export_onnx(model, spec, tmp_path / "lite0.onnx", real_chips=real_chips(8))
    assert report["max_diff"] <= TOLERANCE
