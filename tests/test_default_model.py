"""The shipped default model's two files: which one a run takes, and that the INT8 copy is still the fp32 one's.

The INT8 copy must be remade (``scenetag quantize``) whenever the fp32 default
changes; its spec records the source's sha256 and the comparison that let it
ship, so a stale or off-bar copy fails here rather than on users' scenes.
"""

from __future__ import annotations

import pytest

from scenetag.errors import ModelLoadError, OptionError
from scenetag.hashing import file_sha256
from scenetag.jobs.models import ShippedModel
from scenetag.model.backends import create_predictor, openvino_backend
from scenetag.model.backends.onnx_backend import OnnxPredictor, read_onnx_spec
from scenetag.model.default import DEFAULT_INT8, DEFAULT_MODEL, default_for
from scenetag.model.spec import QUANTIZATION_KEY

needs_openvino = pytest.mark.skipif(not openvino_backend.available(),
                                    reason="openvino is not installed: pip install 'scenetag[openvino]'")
needs_defaults = pytest.mark.skipif(not (DEFAULT_MODEL.exists() and DEFAULT_INT8.exists()),
                                    reason="the shipped default models are absent from this checkout")


@needs_defaults
def test_the_int8_default_is_a_copy_of_the_shipped_fp32_default_within_the_bar():
    spec = read_onnx_spec(DEFAULT_INT8)
    assert spec.quantized and not read_onnx_spec(DEFAULT_MODEL).quantized
    made = spec.extra[QUANTIZATION_KEY]
    assert made["source_sha256"] == file_sha256(DEFAULT_MODEL), "remake the INT8 default: the fp32 one changed"
    assert made["within_bar"] and not made["forced"]
    assert made["tag_decisions_changed"] <= made["bar"]["max_tag_decisions_changed"]
    f2 = made["samples_f2"]
    assert f2["fp32"] - f2["int8"] <= made["bar"]["max_samples_f2_drop"]
    fp32 = read_onnx_spec(DEFAULT_MODEL)
    # Same labels, thresholds, structure, TTA and preprocessing: only the weights are quantised.
    assert (spec.labels, spec.thresholds, spec.structure, spec.tta, spec.bands, spec.mean, spec.std) == \
        (fp32.labels, fp32.thresholds, fp32.structure, fp32.tta, fp32.bands, fp32.mean, fp32.std)


@needs_defaults
@needs_openvino
def test_auto_precision_takes_the_int8_default_where_openvino_runs_it_and_fp32_elsewhere():
    assert default_for("auto", "cpu", "auto") == DEFAULT_INT8
    assert default_for("openvino", "auto", "auto") == DEFAULT_INT8
    assert default_for("auto", "cpu", "fp32") == DEFAULT_MODEL
    assert default_for("onnx", "cpu", "auto") == DEFAULT_MODEL
    assert default_for("torch", "cpu", "auto") == DEFAULT_MODEL
    assert default_for("auto", "cuda", "auto") == DEFAULT_MODEL  # a GPU runs the fp32 file
    assert default_for("onnx", "cpu", "int8") == DEFAULT_INT8


@needs_defaults
def test_precision_int8_refuses_a_model_that_is_not_int8():
    with pytest.raises(OptionError, match=r"--precision int8: model .*scenetag-default\.onnx.* is not an INT8 "
                                          r"model.*scenetag quantize"):
        create_predictor(DEFAULT_MODEL, "onnx", device="cpu", precision="int8")
    assert create_predictor(DEFAULT_INT8, "onnx", device="cpu", precision="int8").spec.quantized


def test_an_unknown_precision_is_refused_with_the_choices(tiny_model):
    with pytest.raises(OptionError, match=r"precision 'int4' is unknown: use one of auto, fp32, int8"):
        create_predictor(tiny_model, "onnx", device="cpu", precision="int4")


@needs_defaults
@needs_openvino
def test_cli_run_on_the_cpu_records_the_int8_default_and_fp32_on_request(tmp_path):
    from tests.cli_helpers import invoke
    from scenetag.outputs_schema.run_record import read_run_record

    demo = next((p for p in (DEFAULT_MODEL.parents[2] / "demo").glob("*.tif")), None)
    if demo is None:
        pytest.skip("the demo scene is absent")
    sha = {}
    for precision in ("auto", "fp32"):
        out = tmp_path / f"{precision}.gpkg"
        result = invoke("run", str(demo), "-o", str(out), "--device", "cpu", "--tta", "none",
                        "--precision", precision)
        assert result.exit_code == 0, result.output
        sha[precision] = read_run_record(out).model_sha256
    assert sha == {"auto": file_sha256(DEFAULT_INT8), "fp32": file_sha256(DEFAULT_MODEL)}


@needs_defaults
@needs_openvino
def test_a_worker_builds_the_backend_asked_for_from_the_shipped_bytes():
    from scenetag.jobs.shipping import _engine
    from scenetag.model.backends.openvino_backend import OpenVinoPredictor

    spec = read_onnx_spec(DEFAULT_INT8)
    data = DEFAULT_INT8.read_bytes()
    sha = file_sha256(DEFAULT_INT8)
    auto = _engine(ShippedModel("/nowhere/model.onnx", sha, spec, "cpu", "auto"), data)
    assert isinstance(auto, OpenVinoPredictor) and auto.sha256 == sha  # read from the bytes, not the path
    assert isinstance(_engine(ShippedModel("/nowhere/model.onnx", sha, spec, "cpu", "onnx"), data), OnnxPredictor)
    with pytest.raises(ModelLoadError, match="cannot be loaded with weights_only"):  # ONNX bytes are no checkpoint
        _engine(ShippedModel("/nowhere/model.onnx", sha, spec, "cpu", "torch"), data)


@needs_defaults
def test_the_int8_card_ships_beside_the_model_and_names_its_comparison():
    card = DEFAULT_INT8.with_name("MODEL_CARD_INT8.md").read_text()
    made = read_onnx_spec(DEFAULT_INT8).extra[QUANTIZATION_KEY]
    assert f"{made['tag_decisions_changed']:.2%}" in card
    assert f"recipe `{made['recipe']}`" in card
