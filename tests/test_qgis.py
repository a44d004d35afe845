"""The GeoPackage of a real scene, opened in a real QGIS (Debian's PyQGIS 3.22).

The scene job classifies Borneo with the tiny model; ``tests/qgis_check.py``
then runs under ``/usr/bin/python3`` and reports, as JSON, what QGIS sees.
Skipped, with the reason, where PyQGIS is not installed (``.ci/run`` installs
``python3-qgis qgis-providers``).
"""

from __future__ import annotations

import html
import shutil
import sqlite3
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio

from scenetag.outputs_schema import styles
from scenetag.outputs_schema.colors import label_color
from scenetag.outputs_schema.raster import grid_transform, write_probability_raster
from scenetag.outputs_schema.schema import CHIPS_LAYER, RUNS_LAYER, SCHEMA_VERSION, OutputSchema
from tests.conftest import real_scene
from tests.qgis_fixtures import QGIS_PYTHON, qgis_unavailable, run_qgis_check

pytestmark = pytest.mark.qgis

BORNEO = "planetscope_borneo_3m_analytic.tif"


@pytest.fixture(scope="module", autouse=True)
def needs_qgis():
    reason = qgis_unavailable()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def borneo(tmp_path_factory, tiny_model):
    """Borneo through the scene job, its probability raster, and QGIS's report on both."""
    from scenetag.jobs.options import RunOptions
    from scenetag.jobs.classify import classify_cells
    from scenetag.jobs.models import LocalModel
    from scenetag.jobs.planning import plan_scene
    from scenetag.jobs.scene_job import Prepared, write_scene
    from scenetag.model.backends import create_predictor

    scene = real_scene(BORNEO)
    from scenetag.model.backends.onnx_backend import read_onnx_spec
    from scenetag.model.training.export import rewrite_onnx_spec

    folder = tmp_path_factory.mktemp("qgis")
    # With a weather group, so that the alternative style by weather is stored and checked too.
    spec = read_onnx_spec(tiny_model).with_structure({"exclusive": {"weather": ["clear", "cloudy"]}})
    predictor = create_predictor(rewrite_onnx_spec(tiny_model, folder / "tiny_weather.onnx", spec))
    plan = plan_scene(scene, predictor.spec, RunOptions(bands=(3, 2, 1)))
    table = classify_cells(plan, predictor)
    gpkg = folder / "borneo.gpkg"
    prep = Prepared(str(scene), str(gpkg), False, "2026-01-01T00:00:00+00:00", time.time(), plan=plan)
    write_scene(prep, LocalModel(predictor), "0" * 64, table)
    raster = write_probability_raster(folder / "borneo_prob.tif", table, predictor.spec.labels, *plan.grid.shape,
                                      grid_transform(plan.info.transform, plan.grid.stride, plan.grid.chip), plan.info.crs)
    png = folder / "borneo.png"
    report = run_qgis_check(gpkg, "--scene", str(scene), "--bands", "3,2,1", "--png", str(png),
                            "--raster", str(raster), "--legend")
    return {"gpkg": gpkg, "png": png, "report": report, "spec": predictor.spec, "scene": scene,
            "chips": pyogrio.read_dataframe(gpkg, layer=CHIPS_LAYER)}


def test_every_layer_is_valid_with_scene_crs_and_counts(borneo):
    report, spec = borneo["report"], borneo["spec"]
    schema = OutputSchema(spec.labels)
    assert report["qgis_version"].startswith("3.")
    assert report["layer_names"] == list(schema.layers)  # layer_styles is not listed as a layer
    assert report["problems"] == []  # includes: every stored default style is the one QGIS applied
    con = sqlite3.connect(borneo["gpkg"])
    for name in schema.layers:
        info = report["layers"][name]
        assert info["valid"], name
        expected = con.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]
        assert info["feature_count"] == expected, name
        if name != RUNS_LAYER:
            assert info["crs"] == "EPSG:32649", name
    con.close()
    assert report["layers"][CHIPS_LAYER]["feature_count"] == len(borneo["chips"]) > 0
    assert report["layers"][RUNS_LAYER]["spatial"] is False


def test_geopackage_1_2_opens_without_partial_support_warning(borneo):
    report = borneo["report"]
    assert report["gpkg"]["user_version"] == 10200
    assert not [m for m in report["gdal_messages"] if "partially supported" in m]


def test_the_checks_can_fail_on_a_1_4_geopackage_with_a_broken_style(borneo, tmp_path):
    """Negative control: the warning and a default style QGIS cannot apply are both caught."""
    copy = tmp_path / "broken.gpkg"
    shutil.copyfile(borneo["gpkg"], copy)
    con = sqlite3.connect(copy)
    con.execute("PRAGMA user_version = 10400")
    con.execute("UPDATE layer_styles SET styleQML = replace(styleQML, 'categorizedSymbol', 'noSuchRenderer') "
                "WHERE f_table_name = 'chips' AND useAsDefault")
    con.commit()
    con.close()
    report = run_qgis_check(copy)
    assert any("10400" in m and "partially supported" in m for m in report["gdal_messages"])
    assert report["layers"][CHIPS_LAYER]["renderer"]["type"] != "categorizedSymbol"
    assert any("10400" in p for p in report["problems"])
    assert any(p.startswith("layer chips: default style is noSuchRenderer") for p in report["problems"])


def test_default_styles_from_the_geopackage_were_applied(borneo):
    report, spec = borneo["report"], borneo["spec"]
    schema = OutputSchema(spec.labels)
    chips = report["layers"][CHIPS_LAYER]["renderer"]
    assert chips["type"] == "categorizedSymbol" and chips["attribute"] == "top_label"
    assert [c["value"] for c in chips["categories"]] == list(spec.labels)
    # Opaque fills in a semi-transparent layer (an overlap is painted once): the imagery shows.
    assert 0 < report["layers"][CHIPS_LAYER]["opacity"] < 1
    for cat in chips["categories"]:
        assert cat["hex"] == label_color(cat["value"]).hex
        assert cat["fill_opacity"] == 1
    for label, layer in zip(spec.labels, schema.label_layers):
        r = report["layers"][layer]["renderer"]
        assert r["type"] == "singleSymbol", layer
        assert r["symbol"]["hex"] == label_color(label).hex, layer
        assert 0 < r["symbol"]["fill_opacity"] < 1, layer


def test_stored_styles_switchable_in_qgis(borneo):
    report, spec = borneo["report"], borneo["spec"]
    schema = OutputSchema(spec.labels)
    stored = report["layers"][CHIPS_LAYER]["stored_styles"]
    assert [s["name"] for s in stored] == ["top_label", "weather", *styles.prob_style_names(spec.labels)]
    assert all(s["parsed"] for s in stored)
    weather = stored.pop(1)["renderer"]
    assert weather["type"] == "categorizedSymbol" and weather["attribute"] == "weather"
    # Every style of the file listed once in QGIS's Load Style dialog, none repeated.
    assert report["layers"][CHIPS_LAYER]["styles_listed"] == len(styles.read_styles(borneo["gpkg"]))
    for s, col in zip(stored[1:], schema.prob_columns):
        assert s["renderer"]["type"] == "graduatedSymbol" and s["renderer"]["attribute"] == col
        assert len(s["renderer"]["ranges"]) == 4


def test_map_tip_shows_tags_and_probabilities_of_the_feature(borneo):
    report, spec = borneo["report"], borneo["spec"]
    info = report["layers"][CHIPS_LAYER]
    first = borneo["chips"].iloc[0]
    sample = info["map_tip_sample"]
    assert f"tags: {first['tags']}" in sample
    assert f"<b>{first['top_label']}</b> ({first['top_prob']:.3f})" in sample
    for label, col in zip(spec.labels, OutputSchema(spec.labels).prob_columns):
        assert f'<td>{html.escape(label)}</td><td align="right">{first[col]:.3f}</td>' in sample
    assert info["aliases"]["p_clear"] == "p(clear)"


def test_metadata_visible_in_layer_properties(borneo):
    for name, info in borneo["report"]["layers"].items():
        md = info["metadata"]
        assert "planetscope_borneo_3m_analytic" in md["title"], name
        assert f"schema v{SCHEMA_VERSION}" in md["abstract"], name
        assert md["keywords"]["scenetag:schema_version"] == [str(SCHEMA_VERSION)], name
        assert any(h.startswith("signature: ") for h in md["history"]), name


def test_probability_raster_opens_with_label_band_names(borneo):
    r = borneo["report"]["raster"]
    spec = borneo["spec"]
    assert r["valid"] and r["crs"] == "EPSG:32649"
    assert r["band_count"] == spec.n_labels
    assert [n.split(": ", 1)[1] for n in r["band_names"]] == list(spec.labels)
    assert r["nodata"] == ["nan"] * spec.n_labels
    assert (r["width"], r["height"]) == (8, 8)
    assert r["renderer"] == "singlebandpseudocolor"  # the heat-map .qml beside it was loaded


def test_rendering_over_the_scene_is_not_blank(borneo):
    png = borneo["report"]["png"]
    assert png["errors"] == []
    assert Path(png["path"]) == borneo["png"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(borneo["png"]) as src:
            rgb = src.read()[:3].astype(int)
    assert rgb.shape[1:] == (png["height"], png["width"])
    not_white = (rgb < 250).any(axis=0)
    assert 0.15 < not_white.mean() < 0.95  # the 27 % valid scene plus chips, on white
    packed = (rgb[0] << 16) | (rgb[1] << 8) | rgb[2]
    assert len(np.unique(packed)) > 500  # imagery, not flat fills
    assert png["non_background_fraction"] > 0.15
    # The chips are drawn: against the scene rendered alone (same extent and size, no legend since
    # no chips), their label colours change most pixels of the scene's valid part (27 %).
    alone = borneo["png"].with_name("borneo_scene_only.png")
    run_qgis_check(borneo["gpkg"], "--scene", str(borneo["scene"]), "--bands", "3,2,1", "--png", str(alone),
                   "--layers", "", "--legend")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(alone) as src:
            scene_only = src.read()[:3].astype(int)
    assert scene_only.shape == rgb.shape
    changed = (np.abs(rgb - scene_only).max(axis=0) > 12).mean()
    assert changed > 0.15, f"only {changed:.1%} of the pixels changed: the chips were not drawn"


def test_to_crs_output_opens_in_the_target_crs(borneo, tiny_model, tmp_path):
    from scenetag.jobs.options import RunOptions
    from scenetag.jobs.runner import run_scene
    from scenetag.model.backends import create_predictor

    out = tmp_path / "borneo_4326.gpkg"
    run_scene(borneo["scene"], out, create_predictor(tiny_model), RunOptions(bands=(3, 2, 1), to_crs="EPSG:4326"))
    report = run_qgis_check(out, "--scene", str(borneo["scene"]), "--bands", "3,2,1",
                            "--png", str(tmp_path / "4326.png"), "--width", "300")
    schema = OutputSchema(borneo["spec"].labels)
    assert report["problems"] == []
    for layer in (CHIPS_LAYER, *schema.label_layers):
        assert report["layers"][layer]["crs"] == "EPSG:4326", layer
    assert report["layers"][CHIPS_LAYER]["feature_count"] == len(borneo["chips"])
    west, south, east, north = report["layers"][CHIPS_LAYER]["extent"]
    assert 110 < west < east < 115 and 0 < south < north < 2  # Borneo, in degrees
    assert report["layers"][CHIPS_LAYER]["renderer"]["type"] == "categorizedSymbol"
    assert report["png"]["non_background_fraction"] > 0.15
    # Its project is in the output CRS, the scene (in its own) reprojected beneath the chips.
    from scenetag.outputs_schema.project import read_project

    project = run_qgis_check(out, "--project", read_project(out)[0])["project"]
    assert project["read"] and project["crs"] == "EPSG:4326"
    assert project["layers"]["scene"]["crs"] == "EPSG:32649" and project["layers"][CHIPS_LAYER]["crs"] == "EPSG:4326"
    assert all(info["valid"] for info in project["layers"].values())


def test_gdal_validator_accepts_the_geopackage(borneo):
    validator = Path("/usr/lib/python3/dist-packages/osgeo_utils/samples/validate_gpkg.py")
    if not validator.exists():
        pytest.skip(f"{validator} is absent (Debian's python3-gdal ships it)")
    proc = subprocess.run([QGIS_PYTHON, str(validator), str(borneo["gpkg"])], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- the project stored in the GeoPackage ---------------------------------------------
def read_png(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            return src.read()[:3].astype(int)


@pytest.fixture(scope="module")
def borneo_project(borneo):
    """QGIS's report on the project stored in the Borneo GeoPackage, with a rendering of it as it opens
    and one of its scene alone (same frame, same scene style)."""
    from scenetag.outputs_schema.project import read_project

    name, _ = read_project(borneo["gpkg"])
    png = borneo["png"].with_name("borneo_project.png")
    report = run_qgis_check(borneo["gpkg"], "--project", name, "--png", str(png))
    alone = borneo["png"].with_name("borneo_project_scene_only.png")
    scene_only = run_qgis_check(borneo["gpkg"], "--project", name, "--png", str(alone), "--project-layers", "scene")
    return {"name": name, "report": report, "png": png, "scene_only": scene_only, "alone": alone}


def test_project_opens_with_the_scene_chips_and_a_collapsed_label_group(borneo, borneo_project):
    from scenetag.outputs_schema.run_record import read_run_record

    schema = OutputSchema(borneo["spec"].labels)
    project = borneo_project["report"]["project"]
    assert borneo_project["name"] == "planetscope_borneo_3m_analytic"
    assert project["read"] and project["crs"] == "EPSG:32649"
    layers = project["layers"]
    assert set(layers) == {CHIPS_LAYER, *schema.label_layers, "scene"}
    assert all(info["valid"] for info in layers.values()), {k: v["source"] for k, v in layers.items()}
    # The GeoPackage's layers, found relative to the project's GeoPackage, in their stored default styles.
    for name in (CHIPS_LAYER, *schema.label_layers):
        assert layers[name]["source"] == f"{borneo['gpkg']}|layername={name}"
        assert layers[name]["renderer"] == borneo["report"]["layers"][name]["renderer"], name
    assert layers[CHIPS_LAYER]["feature_count"] == len(borneo["chips"])
    assert layers[CHIPS_LAYER]["order_by"] == ['"shifted" DESC', '"row" DESC', '"col" DESC']
    assert layers[CHIPS_LAYER]["opacity"] == pytest.approx(styles.CHIP_FILL_ALPHA)
    assert "tags: " in layers[CHIPS_LAYER]["map_tip"]
    # The scene beneath, by its path, in the bands and stretch the model read.
    run = read_run_record(borneo["gpkg"])
    scene = layers["scene"]
    assert scene["provider"] == "gdal" and Path(scene["source"]) == Path(borneo["scene"]).resolve()
    assert scene["renderer"]["type"] == "multibandcolor" and scene["renderer"]["bands"] == [3, 2, 1]
    stretch = run.options["stretch"]
    assert scene["renderer"]["red_range"] == [stretch["low"][0], stretch["high"][0]]
    # Chips on top, the label layers in a group of their own, collapsed and hidden, the scene last.
    tree = project["tree"]["children"]
    assert [c.get("layer", c.get("group")) for c in tree] == [CHIPS_LAYER, "labels", "scene"]
    group = tree[1]
    assert group["expanded"] is False and group["checked"] is False
    assert [c["layer"] for c in group["children"]] == list(schema.label_layers)
    assert tree[0]["checked"] and tree[2]["checked"]


def test_project_renders_the_chips_over_the_scene(borneo_project):
    png = borneo_project["report"]["png"]
    alone = borneo_project["scene_only"]["png"]
    assert png["errors"] == [] and alone["errors"] == []
    assert png["layers"] == [CHIPS_LAYER, "scene"] and alone["layers"] == ["scene"]
    assert png["extent"] == alone["extent"]
    rgb, scene = read_png(borneo_project["png"]), read_png(borneo_project["alone"])
    assert rgb.shape == scene.shape
    packed = (scene[0] << 16) | (scene[1] << 8) | scene[2]
    assert len(np.unique(packed)) > 500  # the scene, stretched: imagery, not a flat fill
    assert (scene < 250).any(axis=0).mean() > 0.15
    changed = (np.abs(rgb - scene).max(axis=0) > 12).mean()
    assert changed > 0.15, f"only {changed:.1%} of the pixels changed: the chips were not drawn"


@pytest.fixture(scope="module")
def shifted(tmp_path_factory, tiny_model):
    """The real 266 x 227 px PlanetScope scene (EPSG:4326) in 64 px chips under --edge shift: the last row
    and column are shifted back and overlap their neighbours.  Its chips rendered alone, on white."""
    from scenetag.jobs.options import RunOptions
    from scenetag.jobs.runner import run_scene
    from scenetag.model.backends import create_predictor

    scene = real_scene("planetscope_3m_epsg4326.tif")
    folder = tmp_path_factory.mktemp("qgis_shift")
    out = folder / "shifted.gpkg"
    run_scene(scene, out, create_predictor(tiny_model), RunOptions(bands=(3, 2, 1), min_valid=0.0))
    png = folder / "shifted_chips.png"
    report = run_qgis_check(out, "--png", str(png), "--width", "1064")
    return {"gpkg": out, "png": png, "report": report, "scene": scene,
            "chips": pyogrio.read_dataframe(out, layer=CHIPS_LAYER)}


def test_shifted_edge_chips_are_drawn_once_beneath_their_neighbours(shifted):
    """Each place of the map is painted once: where a shifted chip overlaps its neighbour, the pixel
    is the neighbour's colour at the layer's opacity over white, exactly as where it does not overlap."""
    chips = shifted["chips"]
    assert chips["shifted"].sum() > 0 and (~chips["shifted"]).sum() > 0
    rgb = read_png(shifted["png"])
    x0, y0, x1, y1 = shifted["report"]["png"]["extent"]
    height, width = rgb.shape[1:]

    def pixel(lon: float, lat: float) -> np.ndarray:
        return rgb[:, int((y1 - lat) / (y1 - y0) * height), int((lon - x0) / (x1 - x0) * width)]

    def drawn(label: str) -> np.ndarray:  # the label's colour at the layer opacity, over white
        c = label_color(label)
        a = styles.CHIP_FILL_ALPHA
        return np.array([a * v + (1 - a) * 255 for v in (c.r, c.g, c.b)])

    checked = 0
    by_pos = {(int(r.row), int(r.col)): r for r in chips.itertuples()}

    def key(chip) -> tuple:  # the style's drawing order: the larger is drawn first, beneath
        return tuple(getattr(chip, f) for f in styles.CHIPS_ORDER_BY)

    for (row, col), chip in by_pos.items():
        for step in ((0, 1), (1, 0)):  # the right and the lower neighbour
            other = by_pos.get((row + step[0], col + step[1]))
            if other is None:
                continue
            box, obox = chip.geometry.bounds, other.geometry.bounds
            overlaps = obox[0] < box[2] if step == (0, 1) else obox[3] > box[1]
            if not overlaps:
                continue
            top, under = (chip, other) if key(chip) < key(other) else (other, chip)
            assert under.shifted  # only shifted chips overlap (no --overlap)
            if step == (0, 1):  # across the overlap at mid-height of the chip: chip | overlap | neighbour
                y = (box[1] + box[3]) / 2
                xs = ((box[0] + obox[0]) / 2, (obox[0] + box[2]) / 2, (box[2] + obox[2]) / 2)
                inside, overlap, beyond = (pixel(x, y) for x in xs)
            else:  # down the overlap at mid-width (latitudes fall downwards)
                x = (box[0] + box[2]) / 2
                ys = ((box[3] + obox[3]) / 2, (obox[3] + box[1]) / 2, (box[1] + obox[1]) / 2)
                inside, overlap, beyond = (pixel(x, y) for y in ys)
            np.testing.assert_allclose(inside, drawn(chip.top_label), atol=3)
            np.testing.assert_allclose(overlap, drawn(top.top_label), atol=3)  # once, the other beneath
            np.testing.assert_allclose(beyond, drawn(other.top_label), atol=3)
            checked += 1
    assert checked >= 4
