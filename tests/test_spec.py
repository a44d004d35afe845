"""ModelSpec: validation, JSON round trip, and storage in ONNX metadata."""

from __future__ import annotations

import re

import pytest

from scenetag.model.spec import PLANET_LABELS, ModelSpec, expand_thresholds
from scenetag.errors import ModelSpecError


def spec(**kw):
    base = dict(name="m", arch="tf_efficientnet_lite0", labels=PLANET_LABELS, thresholds=0.2)
    base.update(kw)
    return ModelSpec.create(**base)


def test_round_trip_json():
    s = spec(thresholds={"haze": 0.3, "*": 0.25})
    back = ModelSpec.from_json(s.to_json())
    assert back == s
    assert back.thresholds[PLANET_LABELS.index("haze")] == pytest.approx(0.3)
    assert back.thresholds[0] == pytest.approx(0.25)


@pytest.mark.parametrize("kw, message", [
    (dict(labels=("a", "a")), "not unique"),
    (dict(labels=()), "no labels"),
    (dict(labels=("a", "b"), thresholds=[0.2, 0.3, 0.4]), "3 thresholds for 2 labels"),
    (dict(thresholds=1.0), "must lie in (0, 1)"),
    (dict(thresholds=0.0), "must lie in (0, 1)"),
    (dict(thresholds=float("nan")), "must lie in (0, 1)"),
    (dict(mean=(0.5, 0.5)), "mean has 2 values for 3 bands"),
    (dict(std=(0.0, 1.0, 1.0)), "std must be positive"),
    (dict(mean=(0.5, float("nan"), 0.5)), "mean (0.5, nan, 0.5) has a value that is not a finite number"),
    (dict(std=(0.2, 0.2, float("nan"))), "std (0.2, 0.2, nan) has a value that is not a finite number"),
    (dict(std=(0.2, float("inf"), 0.2)), "std (0.2, inf, 0.2) has a value that is not a finite number"),
    (dict(mean=(float("-inf"), 0.5, 0.5)), "mean (-inf, 0.5, 0.5) has a value"),
    (dict(scaling="log"), "scaling 'log' is unknown"),
    (dict(scaling="fixed"), "needs fixed_range"),
    (dict(chip_size=4), "chip_size"),
    (dict(resolution_m=0), "resolution_m"),
])
def test_invalid_specs_are_refused_with_the_value(kw, message):
    with pytest.raises(ModelSpecError, match=re.escape(message)):
        spec(**kw)


def test_unknown_fields_and_bad_json():
    with pytest.raises(ModelSpecError, match="unknown fields"):
        ModelSpec.from_dict({"name": "m", "arch": "a", "labels": ["x"], "colour": 1})
    with pytest.raises(ModelSpecError, match="lacks the field 'labels'"):
        ModelSpec.from_dict({"name": "m", "arch": "a"})
    with pytest.raises(ModelSpecError, match="not valid JSON"):
        ModelSpec.from_json("{nope")


def test_threshold_map_with_unknown_label():
    with pytest.raises(ModelSpecError, match="unknown labels"):
        expand_thresholds({"nope": 0.5}, ["a"])


def test_spec_travels_in_onnx_metadata(tiny_model):
    from scenetag.model.backends.onnx_backend import read_onnx_spec
    from tests.model_fixtures import tiny_spec

    assert read_onnx_spec(tiny_model) == tiny_spec()


def test_nan_in_a_json_spec_is_refused():
    """Python's JSON reads NaN and Infinity: a --spec file with them is refused, not used."""
    text = spec().to_json().replace('"std": [0.229, 0.224, 0.225]', '"std": [NaN, 0.224, Infinity]')
    assert "NaN" in text
    with pytest.raises(ModelSpecError, match="std .* not a finite number"):
        ModelSpec.from_json(text)



@pytest.mark.parametrize("labels, first, second, kind, name", [
    (("a b", "a_b"), "a b", "a_b", "tag", "a_b"),
    (("water", "Water"), "water", "Water", "column name", "water"),
    (("road", "road!"), "road", "road!", "column name", "road"),
    (("x" * 48 + "1", "x" * 48 + "2"), "x" * 48 + "1", "x" * 48 + "2", "column name", "x" * 48),
])
def test_labels_that_collide_once_sanitised_are_refused(labels, first, second, kind, name):
    """Two labels written as one tag or one column would be indistinguishable in the outputs."""
    with pytest.raises(ModelSpecError) as err:
        spec(labels=labels)
    assert f"labels {first!r} and {second!r} both become the {kind} {name!r}" in str(err.value)
    assert "rename one of them" in str(err.value)


def test_distinct_labels_keep_their_names():
    from scenetag.outputs_schema.schema import OutputSchema, tag_names

    s = spec(labels=("partly cloudy", "it's; DROP TABLE", "clear"))
    assert tag_names(s.labels) == ("partly_cloudy", "it's;_DROP_TABLE", "clear")
    assert OutputSchema(s.labels).prob_columns == ("p_partly_cloudy", "p_it_s_drop_table", "p_clear")
