"""``scenetag quantize``: INT8 through NNCF on a tiny model, the comparison in the spec and card, the accuracy bar.

Skips, saying why, where the ``openvino`` extra (nncf) or the real Planet chips are absent.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from scenetag.errors import ModelError, OptionError
from scenetag.model.training import quantize as q
from tests.model_fixtures import SMALL_LABELS, small_spec

pytest.importorskip("nncf", reason="nncf is not installed: pip install 'scenetag[openvino]'")
pytest.importorskip("onnx", reason="onnx is not installed: pip install 'scenetag[torch]'")


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """A small model at 64 px with the split of 40 real Planet chips beside it: (model, images, csv)."""
    from scenetag.model.training.data import make_split, read_labels, write_split
    from tests.model_fixtures import export_tiny_model, planet_subset

    tmp = tmp_path_factory.mktemp("quantize")
    images, csv = planet_subset(tmp, 40, SMALL_LABELS)
    split = make_split(read_labels(csv, SMALL_LABELS), 0.5, seed=0)
    write_split(split, tmp / "split.json")  # beside the model: evaluate/calibrate/quantize find it there
    model = export_tiny_model(tmp / "small.onnx", small_spec())
    return model, images, csv


def test_compare_counts_changed_decisions_and_each_model_s_scores():
    spec = small_spec(labels=("a", "b"), thresholds=0.5)
    targets = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], bool)
    fp32 = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.6], [0.1, 0.2]], np.float32)  # every decision right
    int8 = fp32.copy()
    int8[2, 1] = 0.4  # one of 8 decisions changes: a missed tag on chip 2
    c = q.compare(spec, targets, fp32, int8, min_support=1)
    assert c["tag_decisions_changed"] == pytest.approx(1 / 8) and c["chips_with_a_changed_tag"] == pytest.approx(1 / 4)
    assert c["samples_f2"]["fp32"] == pytest.approx(0.75)  # chip 3 has no tags: F2 0 by the zero-division rule
    assert c["samples_f2"]["int8"] == pytest.approx((1 + 1 + 5 / 9 + 0) / 4)  # chip 2: tp 1, fn 1 -> 5/9
    assert c["samples_f2_drop"] == pytest.approx(c["samples_f2"]["fp32"] - c["samples_f2"]["int8"])
    assert c["macro_f1"]["fp32"] == pytest.approx(1.0) and c["macro_f1"]["int8"] < 1.0
    assert c["max_abs_probability_change"] == pytest.approx(0.2)
    assert not c["within_bar"] and "changes 12.50% of tag decisions" in q.refusal(c)
    same = q.compare(spec, targets, fp32, fp32 + 0.01, min_support=1)
    assert same["within_bar"] and same["tag_decisions_changed"] == 0.0 and q.refusal(same) == ""


def test_compare_scores_the_tags_the_spec_makes_with_its_structure():
    from scenetag.model.structure import LabelStructure

    structure = LabelStructure({"weather": ("clear", "haze")}, {})
    spec = small_spec(labels=("clear", "haze"), thresholds=0.5, structure=structure)
    targets = np.array([[1, 0], [0, 1]], bool)
    probs = np.array([[0.9, 0.6], [0.7, 0.8]], np.float32)  # thresholds alone tag both labels on both chips
    c = q.compare(spec, targets, probs, probs, min_support=1)
    # The exclusive group keeps the likelier label: chip 0 clear, chip 1 haze; every tag right.
    assert c["samples_f2"]["fp32"] == pytest.approx(1.0)
    plain = q.compare(small_spec(labels=("clear", "haze"), thresholds=0.5), targets, probs, probs, min_support=1)
    assert plain["samples_f2"]["fp32"] == pytest.approx(5 / 6)  # tp 1, fp 1 per chip: F2 = 5/6


@pytest.fixture(scope="module")
def forced(labelled, tmp_path_factory):
    """The small model quantised with the plain recipe, written whatever its accuracy: (result, out)."""
    model, images, csv = labelled
    out = tmp_path_factory.mktemp("int8") / "small-int8.onnx"
    return q.quantize_model(model, images, out, csv, recipe="plain", force=True, on_wrong_size="resize"), out


def test_quantize_writes_an_int8_model_with_the_comparison_in_its_spec_and_card(labelled, forced):
    import onnx

    from scenetag.model.backends import create_predictor
    from scenetag.model.training.data import load_images, read_labels

    model, images, csv = labelled
    result, out = forced
    tmp_path = out.parent
    assert result.out == out and out.is_file() and result.card == tmp_path / "small-int8.md"
    proto = onnx.load(str(out))
    assert any(n.op_type == "QuantizeLinear" for n in proto.graph.node)  # really INT8 (QDQ)
    int8 = create_predictor(out, backend="onnx")
    stored = int8.spec.extra[q.SPEC_KEY]
    assert stored == json.loads(json.dumps(result.comparison))  # the same comparison, stored in the spec
    assert int8.spec.labels == SMALL_LABELS and int8.spec.name == "small-test-int8"
    assert stored["calibration"] == {"split": "train", "n_chips": 20} and stored["n_images"] == 20
    # The stored numbers are those of the two models on the validation split.
    val = json.loads((model.parent / "split.json").read_text())["val"]
    table = read_labels(csv, SMALL_LABELS).subset(val)
    x = load_images(images, table.names, 64, "resize")
    backend = stored["evaluation"]["backend"]  # auto's choice on the CPU
    assert backend in ("onnx", "openvino")
    expected = q.compare(int8.spec, table.targets, create_predictor(model, backend=backend).predict(x),
                         create_predictor(out, backend=backend).predict(x))
    assert stored["tag_decisions_changed"] == pytest.approx(expected["tag_decisions_changed"])
    assert stored["samples_f2"] == pytest.approx(expected["samples_f2"])
    card = result.card.read_text()
    assert f"{stored['tag_decisions_changed']:.2%}" in card and "recipe `plain`" in card
    # Not replaced without --overwrite.
    with pytest.raises(Exception, match="exists: pass --overwrite"):
        q.quantize_model(model, images, out, csv, recipe="plain", force=True, on_wrong_size="resize")


def test_quantize_refuses_a_model_that_misses_the_bar_and_writes_nothing(labelled, forced, tmp_path, monkeypatch):
    import onnx

    model, images, csv = labelled
    # NNCF's INT8 graph of the fixture (what it makes for this model), without running NNCF again.
    proto = onnx.load(str(forced[1]))
    monkeypatch.setattr(q, "quantize_onnx", lambda *a, **k: proto)
    out = tmp_path / "int8.onnx"
    # A bar no model can meet: samples-F2 must rise by 1.
    with pytest.raises(ModelError, match=r"the INT8 model was not written: samples-F2 drops by .*--force"):
        q.quantize_model(model, images, out, csv, recipe="plain", max_f2_drop=-1.0, on_wrong_size="resize")
    assert not out.exists() and not q.card_path(out).exists()
    assert list(tmp_path.iterdir()) == []  # no temporary left behind either
    # The same model at the default bar is written or refused by its comparison alone.
    try:
        result = q.quantize_model(model, images, out, csv, recipe="plain", on_wrong_size="resize")
    except ModelError:
        assert not out.exists()
    else:
        assert result.within_bar and out.exists()


def test_quantize_command_forced_past_the_bar_says_so(labelled, tmp_path):
    from click.testing import CliRunner

    from cli import main

    model, images, csv = labelled
    out = tmp_path / "int8.onnx"
    result = CliRunner().invoke(main, ["quantize", str(model), "--chips", str(images), "--labels", str(csv),
                                       "-o", str(out), "--recipe", "keep-head", "--resize", "--force",
                                       "--max-tag-change", "0", "--max-f2-drop", "0"])
    assert result.exit_code == 0, result.output
    stored = json.loads(result.stdout)
    assert stored["recipe"] == "keep-head" and stored["bar"] == {"max_tag_decisions_changed": 0.0,
                                                                  "max_samples_f2_drop": 0.0}
    assert stored["forced"] == (not stored["within_bar"])
    assert out.is_file() and q.card_path(out).is_file()


def test_quantize_refuses_what_it_cannot_quantise(labelled, tmp_path):
    model, images, csv = labelled
    with pytest.raises(OptionError, match="NAME.onnx"):
        q.quantize_model(model, images, tmp_path / "int8.xml", csv)
    with pytest.raises(OptionError, match="is MODEL itself"):
        q.quantize_model(model, images, model, csv, overwrite=True)
    with pytest.raises(OptionError, match="--recipe 'nope' is unknown"):
        q.quantize_model(model, images, tmp_path / "int8.onnx", csv, recipe="nope")
