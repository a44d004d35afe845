"""Label structure: exclusive groups and suppression rules, in the spec and on hand-made probabilities."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scenetag.errors import ModelSpecError, ScenetagError
from scenetag.model.spec import PLANET_LABELS, ModelSpec
from scenetag.model.structure import PLANET_WEATHER, LabelStructure, planet_structure
from scenetag.outputs_schema.records import top_and_weather

J = {lab: j for j, lab in enumerate(PLANET_LABELS)}


def planet_spec(thresholds=0.2) -> ModelSpec:
    return ModelSpec.create("p", "a", PLANET_LABELS, thresholds, structure=planet_structure(PLANET_LABELS))


def probs(*rows: dict) -> np.ndarray:
    out = np.zeros((len(rows), len(PLANET_LABELS)), np.float32)
    for i, row in enumerate(rows):
        for lab, p in row.items():
            out[i, J[lab]] = p
    return out


def tagged(spec: ModelSpec, p: np.ndarray) -> list[set[str]]:
    return [{lab for lab, t in zip(spec.labels, row) if t} for row in spec.tags(p)]


def test_exactly_one_weather_label_the_most_probable_even_below_every_threshold():
    spec = planet_spec(0.5)
    p = probs({"clear": 0.9, "haze": 0.6, "partly_cloudy": 0.7, "primary": 0.8},  # three above: the top one
              {"clear": 0.1, "haze": 0.3, "primary": 0.4})  # all below: still the top one
    assert tagged(spec, p) == [{"clear", "primary"}, {"haze"}]
    plain = spec.tags(p, structured=False)
    assert plain[0, [J[w] for w in PLANET_WEATHER]].sum() == 3 and not plain[1].any()


def test_ties_go_to_the_first_label_of_the_group():
    spec = planet_spec()
    p = probs({"haze": 0.6, "clear": 0.6, "primary": 0.9}, {"cloudy": 0.5, "partly_cloudy": 0.5})
    assert tagged(spec, p) == [{"clear", "primary"}, {"partly_cloudy"}]


def test_cloudy_removes_land_labels_but_other_weather_keeps_them():
    spec = planet_spec()
    p = probs({"cloudy": 0.9, "primary": 0.95, "water": 0.5, "road": 0.3},
              {"partly_cloudy": 0.9, "primary": 0.95, "water": 0.5})
    assert tagged(spec, p) == [{"cloudy"}, {"partly_cloudy", "primary", "water"}]


def test_structure_travels_with_the_spec_json():
    spec = planet_spec()
    back = ModelSpec.from_json(spec.to_json())
    assert back.structure == spec.structure and back.spec_version == 2
    assert back.weather_labels == PLANET_WEATHER
    p = np.random.default_rng(0).random((50, 17)).astype(np.float32)
    assert (back.tags(p) == spec.tags(p)).all()
    assert (back.tags(p)[:, [J[w] for w in PLANET_WEATHER]].sum(1) == 1).all()


@pytest.mark.parametrize("structure, named", [
    ({"exclusive": {"weather": ["clear", "sunny"]}}, "'sunny'"),
    ({"exclusive": {"a": ["clear", "haze"], "b": ["haze", "cloudy"]}}, "'haze'"),
    ({"exclusive": {"a": ["clear", "clear"]}}, "'clear'"),
    ({"exclusive": {"a": ["clear"]}}, "'a'"),
    ({"suppresses": {"cloudy": ["primary", "forest"]}}, "'forest'"),
    ({"suppresses": {"fog": ["primary"]}}, "'fog'"),
    ({"suppresses": {"cloudy": ["cloudy"]}}, "'cloudy'"),
    ({"groups": {}}, "'groups'"),
])
def test_bad_structures_are_refused_when_the_spec_is_read_naming_the_label(structure, named):
    data = ModelSpec.create("p", "a", PLANET_LABELS).to_dict() | {"structure": structure}
    with pytest.raises(ModelSpecError, match=named) as info:
        ModelSpec.from_dict(data)
    assert isinstance(info.value, ScenetagError)


def test_no_structure_changes_nothing():
    spec = ModelSpec.create("p", "a", PLANET_LABELS, 0.3)
    p = np.random.default_rng(1).random((20, 17)).astype(np.float32)
    assert not spec.structure
    assert (spec.tags(p) == (p >= 0.3)).all()


def test_top_label_is_land_cover_and_weather_is_the_weather_tag():
    spec = planet_spec()
    p = probs({"clear": 0.99, "primary": 0.7, "water": 0.8}, {"cloudy": 0.9, "primary": 0.2})
    top, top_p, weather = top_and_weather(p, spec.tags(p), spec.labels, spec.weather_labels, spec.grouped_labels)
    assert list(top) == ["water", "primary"] and np.allclose(top_p, [0.8, 0.2])
    assert list(weather) == ["clear", "cloudy"]
    top, _, weather = top_and_weather(p, p >= 0.2, spec.labels)  # no groups: as before
    assert list(top) == ["clear", "cloudy"] and list(weather) == [None, None]


def test_structure_is_a_value():
    s = LabelStructure.from_dict(planet_structure(PLANET_LABELS).to_dict())
    assert s == planet_structure(PLANET_LABELS) and bool(s) and not LabelStructure()


def test_a_bad_structure_in_onnx_metadata_is_refused_when_the_model_is_read(tmp_path):
    import onnx

    from scenetag.model.backends.onnx_backend import read_onnx_spec
    from scenetag.model.spec import METADATA_KEY
    from tests.model_fixtures import export_constant_model, tiny_spec

    path = export_constant_model(tmp_path / "m.onnx", [0.5] * 5)
    proto = onnx.load(str(path))
    data = tiny_spec().to_dict() | {"structure": {"exclusive": {"w": ["clear", "cloudy"], "v": ["cloudy", "water"]}}}
    for p in proto.metadata_props:
        if p.key == METADATA_KEY:
            p.value = json.dumps(data)  # as another tool might write it: never validated by us
    onnx.save(proto, str(path))
    with pytest.raises(ModelSpecError, match="'cloudy'"):
        read_onnx_spec(path)


def test_the_geopackage_has_one_weather_tag_per_chip_and_a_weather_style(tmp_path, make_raster):
    import scenetag
    from scenetag.model.backends import create_predictor
    from scenetag.outputs_schema.styles import read_styles
    from tests.model_fixtures import export_constant_model, tiny_spec

    spec = tiny_spec().with_structure({"exclusive": {"weather": ["clear", "cloudy"]},
                                       "suppresses": {"cloudy": ["primary"]}})
    # Both weather labels and primary above their thresholds; cloudy the more probable.
    model = export_constant_model(tmp_path / "m.onnx", [0.6, 0.9, 0.8, 0.7, 0.1], spec)
    out = tmp_path / "o.gpkg"
    scenetag.run_scene(make_raster(width=128, height=128), out, model=create_predictor(model))
    chips = scenetag.read_chips(out)
    assert (chips["weather"] == "cloudy").all() and (chips["tags"] == "cloudy water").all()
    assert (chips["top_label"] == "primary").all()  # land cover by probability, not weather
    styles = {row["styleName"]: row for row in read_styles(out) if row["f_table_name"] == "chips"}
    assert "weather" in styles and not styles["weather"]["useAsDefault"]
    assert 'attr="weather"' in styles["weather"]["styleQML"]


def test_a_new_model_on_planet_labels_declares_planet_structure_and_other_labels_none():
    from scenetag.model.spec import PLANET_LABELS
    from scenetag.model.structure import planet_structure, structure_for
    from scenetag.model.training.train import TrainConfig, _make_spec

    split = {"method": "m", "seed": 0, "val_fraction": 0.2, "data_digest": "d", "train": [1], "val": [2]}
    spec = _make_spec(TrainConfig(name="n", arch="a"), PLANET_LABELS, split)
    assert spec.structure == planet_structure(PLANET_LABELS) and spec.structure
    # Three of the four weather labels: no exclusive group can be declared from them.
    assert not structure_for(("clear", "haze", "cloudy", "primary"))
    assert not _make_spec(TrainConfig(name="n", arch="a"), ("forest", "water"), split).structure
