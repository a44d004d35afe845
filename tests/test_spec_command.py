"""``scenetag spec show|set``, and the per-run overrides ``run --thresholds`` / ``--tta`` as a user sees them."""

from __future__ import annotations

import json

from click.testing import CliRunner

from scenetag.cli import main
from scenetag.model.backends.onnx_backend import read_onnx_spec


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_spec_show_prints_labels_thresholds_structure_and_tta(tiny_model):
    res = invoke("spec", "show", tiny_model)
    assert res.exit_code == 0, res.output
    assert "tta         none" in res.output and "structure   none" in res.output
    assert "it's; DROP TABLE chips--" in res.output and "0.45" in res.output
    as_json = json.loads(invoke("spec", "show", tiny_model, "--json").stdout)
    assert as_json["labels"][0] == "clear" and as_json["tta"] == "none"


def test_spec_set_edits_without_retraining_and_refuses_bad_values(tiny_model, tmp_path):
    out = tmp_path / "m2.onnx"
    structure = tmp_path / "s.json"
    structure.write_text(json.dumps({"exclusive": {"weather": ["clear", "cloudy"]},
                                     "suppresses": {"cloudy": ["primary", "water"]}}))
    res = invoke("spec", "set", tiny_model, "--thresholds", "primary=0.3", "--tta", "d4",
                 "--structure", structure, "-o", out)
    assert res.exit_code == 0, res.output
    spec, old = read_onnx_spec(out), read_onnx_spec(tiny_model)
    assert spec.tta == "d4" and spec.structure.exclusive == {"weather": ("clear", "cloudy")}
    assert spec.thresholds[2] == 0.3 and spec.thresholds[:2] == old.thresholds[:2]  # the others keep theirs
    assert "exclusive   weather: clear, cloudy" in invoke("spec", "show", out).output
    again = invoke("spec", "set", tiny_model, "--tta", "flips", "-o", out)
    assert again.exit_code != 0 and "--overwrite" in again.output
    structure.write_text(json.dumps({"exclusive": {"weather": ["clear", "sunny"]}}))
    bad = invoke("spec", "set", tiny_model, "--structure", structure, "-o", tmp_path / "m3.onnx")
    assert bad.exit_code != 0 and "'sunny'" in bad.output and not (tmp_path / "m3.onnx").exists()
    bad = invoke("spec", "set", tiny_model, "--thresholds", "fog=0.3", "-o", tmp_path / "m3.onnx")
    assert bad.exit_code != 0 and "fog" in bad.output and not (tmp_path / "m3.onnx").exists()


def test_run_thresholds_and_tta_override_the_spec_for_one_run(tiny_model, make_raster, tmp_path):
    from scenetag.outputs_schema.run_record import read_run_record

    scene = make_raster(width=128, height=128)
    plain = tmp_path / "plain.gpkg"
    assert invoke("run", scene, "-o", plain, "--model", tiny_model).exit_code == 0
    low = tmp_path / "low.gpkg"
    res = invoke("run", scene, "-o", low, "--model", tiny_model, "--thresholds", "0.01", "--tta", "flips")
    assert res.exit_code == 0, res.output
    rec, base = read_run_record(low), read_run_record(plain)
    assert set(rec.thresholds.values()) == {0.01} and rec.model_spec["tta"] == "flips"
    assert rec.signature != base.signature  # a different result: never taken as up to date
    import scenetag

    tags = scenetag.read_chips(low)["n_tags"].to_numpy()
    assert (tags == 5).all() and (scenetag.read_chips(plain)["n_tags"].to_numpy() < 5).any()
    bad = invoke("run", scene, "-o", tmp_path / "bad.gpkg", "--model", tiny_model, "--thresholds", "x=")
    assert bad.exit_code != 0 and "--thresholds" in bad.output


def test_evaluate_reports_with_and_without_the_structure(tiny_model, tmp_path):
    from tests.model_fixtures import TINY_LABELS, generated_chips

    out = tmp_path / "m2.onnx"
    structure = tmp_path / "s.json"
    structure.write_text(json.dumps({"exclusive": {"weather": ["clear", "cloudy"]}}))
    assert invoke("spec", "set", tiny_model, "--structure", structure, "--thresholds", "0.01", "-o", out).exit_code == 0
    images = generated_chips(tmp_path, lambda i: f"{TINY_LABELS[i % 2]} primary")
    res = invoke("evaluate", out, images, "--split", "all", "--format", "json")
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert result["structured"] and result["groups_not_one"] == {"weather": 0}
    assert result["without_structure"]["groups_not_one"] == {"weather": 8}  # 0.01: both weather labels tagged
    cal = invoke("calibrate", out, images, "--split", "all", "--global-threshold", "0.2")
    assert cal.exit_code == 0, cal.output
    assert "cross-fitted samples-f2" in cal.stderr and "kept:" in cal.stderr
