"""QGIS styles, label colours and metadata stored in the GeoPackage (no QGIS needed)."""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import xml.etree.ElementTree as ET

import pyogrio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scenetag.model.spec import PLANET_LABELS, ModelSpec
from scenetag.outputs_schema import metadata, qml, styles
from scenetag.outputs_schema.colors import PALETTE, PLANET_PALETTE, Color, label_color, label_colors, label_key
from scenetag.outputs_schema.schema import CHIPS_LAYER, RUNS_LAYER, SCHEMA_VERSION, OutputSchema
from tests.model_fixtures import TINY_LABELS, tiny_spec
from tests.qgis_fixtures import fake_run, write_synthetic_gpkg


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    return tiny_spec()


@pytest.fixture(scope="module")
def shared_gpkg(tmp_path_factory, spec):
    """One styled GeoPackage for the tests that only read it."""
    return write_synthetic_gpkg(tmp_path_factory.mktemp("styles") / "styled.gpkg", spec)


@pytest.fixture
def gpkg(tmp_path, shared_gpkg):
    """A copy of the styled GeoPackage that the test may change."""
    path = tmp_path / "styled.gpkg"
    shutil.copyfile(shared_gpkg, path)
    return path


def amend(path, add, *args) -> None:
    """Call ``add(connection, *args)`` on the GeoPackage at ``path``, as the writer does."""
    with contextlib.closing(sqlite3.connect(path)) as con:
        add(con, *args)


def provenance(path) -> dict:
    """The JSON provenance document of the GeoPackage at ``path``."""
    [doc] = [r for r in metadata.read_metadata(path) if r["md_standard_uri"] == metadata.PROVENANCE_URI]
    assert doc["mime_type"] == "application/json" and doc["reference_scope"] == "geopackage"
    return json.loads(doc["metadata"])


def qml_root(text: str) -> ET.Element:
    assert text.startswith("<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>")
    return ET.fromstring(text.split("\n", 1)[1])


def fill_color(symbol: ET.Element) -> str:
    return symbol.find("layer/prop[@k='color']").get("v")


def styles_by(gpkg_path) -> dict[tuple[str, str], dict]:
    return {(r["f_table_name"], r["styleName"]): r for r in styles.read_styles(gpkg_path)}


# -- colours -------------------------------------------------------------------
def test_planet_palette_covers_every_planet_label_with_distinct_colours():
    import colorcet

    assert set(PLANET_PALETTE) == set(PLANET_LABELS)
    assert len({c.hex for c in PLANET_PALETTE.values()}) == len(PLANET_LABELS)
    # colorcet's palette, pinned: a label's colour must not move between releases.
    assert [c.hex for c in PALETTE] == colorcet.palette["glasbey_category10"]
    assert label_color("water").hex == "#1f77b3"
    assert label_color("primary").hex == "#2ba02b"


def test_label_lookup_ignores_case_spaces_and_hyphens():
    assert label_key(" Partly cloudy ") == "partly_cloudy"
    assert label_color("Partly-Cloudy") == label_color("partly_cloudy") == PLANET_PALETTE["partly_cloudy"]


def test_unknown_labels_hash_to_a_fixed_colour():
    # Pinned: a salted hash() or a changed derivation would move every user's colours.
    assert label_color("mangrove").hex == "#6469cf"
    assert label_color("mangrove") == label_color("Mangrove") == label_color(" mangrove ")
    assert label_color("slash_burn") == label_color("Slash-Burn") == label_color("slash burn")
    assert label_color("mangrove") != label_color("mangroves")
    assert label_color("mangrove") not in PLANET_PALETTE.values()


def test_one_models_labels_never_share_a_colour():
    labels = [f"class {i}" for i in range(200)] + list(PLANET_LABELS)
    colours = label_colors(labels)
    assert len(set(colours)) == len(labels)
    assert colours[-len(PLANET_LABELS):] == tuple(PLANET_PALETTE[k] for k in PLANET_LABELS)
    assert label_colors(labels) == colours  # stable


@given(st.text(min_size=1, max_size=40))
@settings(max_examples=30, deadline=None)
def test_any_label_gets_a_valid_stable_colour(label):
    c = label_color(label)
    assert c == label_color(f"  {label} ")  # looked up by its key: outer spaces don't count
    assert c in PALETTE
    assert c.qgis(0.5).count(",") == 3


#: What the chips are drawn over: white (no scene), black (nodata), grey, and Amazon forest.
BACKGROUNDS = ((255, 255, 255), (0, 0, 0), (128, 128, 128), (46, 74, 43))
#: Least CIEDE2000 difference between two labels as drawn (5 was the old clear/partly_cloudy pair,
#: which could not be told apart at a glance; ~2 is a just-noticeable difference).
MIN_DELTA_E = 8.0


def drawn_label_colours(qml_text: str) -> dict[str, tuple[float, ...]]:
    """Label -> (r, g, b, opacity) of its chips as the style draws them: fill alpha times layer opacity."""
    root = qml_root(qml_text)
    layer_opacity = float(root.find("layerOpacity").text)
    r = root.find("renderer-v2")
    out = {}
    for cat in r.findall("categories/category"):
        rgba = [int(v) for v in fill_color(r.find(f"symbols/symbol[@name='{cat.get('symbol')}']")).split(",")]
        out[cat.get("value")] = (*rgba[:3], rgba[3] / 255 * layer_opacity)
    return out


def test_planet_label_colours_stay_distinct_as_drawn_over_any_background():
    import itertools

    import numpy as np
    from skimage.color import deltaE_ciede2000, rgb2lab

    drawn = drawn_label_colours(styles.chips_categorized_qml(OutputSchema(PLANET_LABELS)))
    assert set(drawn) == set(PLANET_LABELS)
    worst = (np.inf, None)
    for bg in BACKGROUNDS:
        over = {k: [a * c + (1 - a) * b for c, b in zip(v[:3], bg)] for k, v in drawn.items() for a in [v[3]]}
        assert all(0.3 <= v[3] <= 0.7 for v in drawn.values())  # the scene still shows through
        lab = {k: rgb2lab(np.asarray(v, float)[None, None] / 255)[0, 0] for k, v in over.items()}
        for x, y in itertools.combinations(lab, 2):
            worst = min(worst, (float(deltaE_ciede2000(lab[x], lab[y])), (x, y, bg)))
    assert worst[0] >= MIN_DELTA_E, f"{worst[1][0]} and {worst[1][1]} are {worst[0]:.1f} apart over {worst[1][2]}"


def test_colour_notations():
    c = Color.from_hex("#1F78B4")
    assert (c.r, c.g, c.b) == (31, 120, 180)
    assert c.hex == "#1f78b4"
    assert c.qgis(0.4) == "31,120,180,102"
    with pytest.raises(ValueError):
        Color(256, 0, 0)
    with pytest.raises(ValueError):
        c.qgis(1.5)


# -- the layer_styles table -------------------------------------------------------
def test_layer_styles_has_qgis_definition_and_is_registered(gpkg):
    con = sqlite3.connect(gpkg)
    cols = [(r[1], r[2]) for r in con.execute("PRAGMA table_info(layer_styles)")]
    contents = con.execute("SELECT data_type FROM gpkg_contents WHERE table_name='layer_styles'").fetchone()
    con.close()
    assert cols == [
        ("id", "INTEGER"), ("f_table_catalog", "TEXT(256)"), ("f_table_schema", "TEXT(256)"),
        ("f_table_name", "TEXT(256)"), ("f_geometry_column", "TEXT(256)"), ("styleName", "TEXT(30)"),
        ("styleQML", "TEXT"), ("styleSLD", "TEXT"), ("useAsDefault", "BOOLEAN"), ("description", "TEXT"),
        ("owner", "TEXT(30)"), ("ui", "TEXT(30)"), ("update_time", "DATETIME"),
    ]
    assert contents == ("attributes",)
    # GDAL lists and reads it like any table (QGIS reads it through GDAL).
    assert "layer_styles" in pyogrio.list_layers(gpkg)[:, 0]
    assert len(pyogrio.read_dataframe(gpkg, layer="layer_styles")) == len(styles.read_styles(gpkg))


def test_one_default_style_per_layer_matching_qgis_lookup(gpkg, spec):
    schema = OutputSchema(spec.labels)
    rows = styles.read_styles(gpkg)
    con = sqlite3.connect(gpkg)
    geom = dict(con.execute("SELECT table_name, column_name FROM gpkg_geometry_columns"))
    con.close()
    for layer in (CHIPS_LAYER, *schema.label_layers):
        mine = [r for r in rows if r["f_table_name"] == layer]
        assert sum(r["useAsDefault"] for r in mine) == 1, layer
        for r in mine:
            # QGIS selects with f_table_schema='' (not NULL) and the layer's geometry column.
            assert r["f_table_schema"] == "" and r["f_table_catalog"] == ""
            assert r["f_geometry_column"] == geom[layer]
            assert 0 < len(r["styleName"]) <= styles.MAX_STYLE_NAME
            assert r["update_time"].endswith("Z")
    # Each row in a second of its own: QGIS 3.22 repeats styles that share one in its list.
    assert len({r["update_time"][:19] for r in rows}) == len(rows)
    assert {r["f_table_name"] for r in rows} == {CHIPS_LAYER, *schema.label_layers}
    names = [r["styleName"] for r in rows if r["f_table_name"] == CHIPS_LAYER]
    assert names == ["top_label", *styles.prob_style_names(spec.labels)]
    assert len(set(names)) == len(names)


def test_chips_default_is_categorised_by_top_label_in_label_colours(gpkg, spec):
    row = styles_by(gpkg)[(CHIPS_LAYER, "top_label")]
    root = qml_root(row["styleQML"])
    r = root.find("renderer-v2")
    assert r.get("type") == "categorizedSymbol" and r.get("attr") == "top_label"
    cats = r.findall("categories/category")
    assert [c.get("value") for c in cats] == list(spec.labels)  # the hostile label survives intact
    symbols = {s.get("name"): s for s in r.findall("symbols/symbol")}
    for cat, label in zip(cats, spec.labels):
        color = fill_color(symbols[cat.get("symbol")])
        assert color == label_colors(spec.labels)[list(spec.labels).index(label)].qgis(1.0)
    # Opaque fills in a semi-transparent layer: the imagery shows, an overlap is painted once,
    # and shifted chips are drawn first, beneath their neighbours.
    assert 0 < float(root.find("layerOpacity").text) < 1
    assert r.get("enableorderby") == "1"
    clauses = r.findall("orderby/orderByClause")
    assert [c.text for c in clauses] == ['"shifted"', '"row"', '"col"']
    assert all(c.get("asc") == "0" for c in clauses)


def test_chips_map_tip_shows_tags_and_every_probability(gpkg, spec):
    schema = OutputSchema(spec.labels)
    root = qml_root(styles_by(gpkg)[(CHIPS_LAYER, "top_label")]["styleQML"])
    tip = root.find("mapTip").text
    assert '[% "tags" %]' in tip
    for col in schema.prob_columns:
        assert f'format_number("{col}", 3)' in tip
    assert "it&#x27;s; DROP TABLE chips--" in tip  # label names are HTML-escaped in the template
    aliases = {a.get("field"): a.get("name") for a in root.findall("aliases/alias")}
    assert aliases[schema.prob_columns[-1]] == f"p({TINY_LABELS[-1]})"


def test_graduated_styles_per_label_break_at_the_threshold(gpkg, spec):
    schema = OutputSchema(spec.labels)
    by = styles_by(gpkg)
    for i, name in enumerate(styles.prob_style_names(spec.labels)):
        row = by[(CHIPS_LAYER, name)]
        assert row["useAsDefault"] == 0
        r = qml_root(row["styleQML"]).find("renderer-v2")
        assert r.get("type") == "graduatedSymbol" and r.get("attr") == schema.prob_columns[i]
        ranges = [(float(x.get("lower")), float(x.get("upper"))) for x in r.findall("ranges/range")]
        assert ranges[0][0] == 0.0 and ranges[-1][1] == 1.0
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))  # contiguous
        assert spec.thresholds[i] in [lo for lo, _ in ranges]
        tagged = [x.get("label") for x in r.findall("ranges/range") if float(x.get("lower")) >= spec.thresholds[i]]
        assert tagged and all("(tagged)" in t for t in tagged)


def test_label_layers_filled_semi_transparently_in_the_same_colour_as_chips(gpkg, spec):
    schema = OutputSchema(spec.labels)
    by = styles_by(gpkg)
    chip_root = qml_root(by[(CHIPS_LAYER, "top_label")]["styleQML"]).find("renderer-v2")
    chip_rgb = {c.get("value"): fill_color(chip_root.find(f"symbols/symbol[@name='{c.get('symbol')}']"))
                .rsplit(",", 1)[0] for c in chip_root.findall("categories/category")}
    for label, layer in zip(spec.labels, schema.label_layers):
        r = qml_root(by[(layer, "label_fill")]["styleQML"]).find("renderer-v2")
        assert r.get("type") == "singleSymbol"
        rgba = fill_color(r.find("symbols/symbol")).split(",")
        assert ",".join(rgba[:3]) == chip_rgb[label] == label_color(label).qgis().rsplit(",", 1)[0]
        assert 0 < int(rgba[3]) < 255


def test_colours_are_the_same_across_runs_with_other_label_sets(tmp_path, spec):
    other = ModelSpec.create("other", spec.arch, ("water", "road", "clear"), 0.3)
    a = write_synthetic_gpkg(tmp_path / "a.gpkg", spec, seed=1)
    b = write_synthetic_gpkg(tmp_path / "b.gpkg", other, seed=2)

    def colours(path):
        r = qml_root(styles_by(path)[(CHIPS_LAYER, "top_label")]["styleQML"]).find("renderer-v2")
        return {c.get("value"): fill_color(r.find(f"symbols/symbol[@name='{c.get('symbol')}']"))
                for c in r.findall("categories/category")}

    ca, cb = colours(a), colours(b)
    assert ca["water"] == cb["water"] and ca["clear"] == cb["clear"]


def test_add_styles_twice_replaces_instead_of_duplicating(gpkg, spec):
    before = styles.read_styles(gpkg)
    amend(gpkg, styles.add_styles, spec)
    after = styles.read_styles(gpkg)
    assert len(after) == len(before)
    assert [(r["f_table_name"], r["styleName"], r["useAsDefault"]) for r in after] == \
           [(r["f_table_name"], r["styleName"], r["useAsDefault"]) for r in before]


def test_add_styles_refuses_a_geopackage_without_the_layers(tmp_path, spec):
    other = ModelSpec.create("other", spec.arch, ("water", "road"), 0.3)
    path = write_synthetic_gpkg(tmp_path / "o.gpkg", other)
    with pytest.raises(ValueError, match="label_clear"):
        amend(path, styles.add_styles, spec)


@given(st.lists(st.text(min_size=1, max_size=30).filter(str.strip), min_size=1, max_size=5, unique=True))
@settings(max_examples=25, deadline=None)
def test_qml_is_well_formed_for_any_label_text(labels):
    schema = OutputSchema(tuple(labels))
    for text in (styles.chips_categorized_qml(schema), styles.chips_graduated_qml(schema, 0, 0.5),
                 styles.label_layer_qml(labels[0])):
        root = qml_root(text)
        assert root.tag == "qgis"
    cats = qml_root(styles.chips_categorized_qml(schema)).findall("renderer-v2/categories/category")
    assert [c.get("value") for c in cats] == [qml.xml_safe(x) for x in labels]


# -- metadata ------------------------------------------------------------------------
def test_metadata_has_schema_version_and_provenance_per_layer(gpkg, spec):
    schema = OutputSchema(spec.labels)
    run = fake_run(run_id="abc123", scene_path="/data/borneo.tif", thresholds={"clear": 0.45})
    amend(gpkg, metadata.add_metadata, spec, run)
    rows = metadata.read_metadata(gpkg)
    qgis_rows = {r["table_name"]: r for r in rows if r["md_standard_uri"] == metadata.QGIS_METADATA_URI}
    assert set(qgis_rows) == set(schema.layers)
    assert all(r["reference_scope"] == "table" and r["mime_type"] == "text/xml" for r in qgis_rows.values())
    root = ET.fromstring(qgis_rows[CHIPS_LAYER]["metadata"].split("\n", 1)[1])
    assert root.find("identifier").text == CHIPS_LAYER
    assert "borneo" in root.find("title").text
    assert f"schema v{SCHEMA_VERSION}" in root.find("abstract").text
    kw = {k.get("vocabulary"): [x.text for x in k] for k in root.findall("keywords")}
    assert kw["scenetag:schema_version"] == [str(SCHEMA_VERSION)]
    assert kw["scenetag:labels"] == list(spec.labels)
    history = [h.text for h in root.findall("history")]
    assert "run_id: abc123" in history
    assert 'thresholds: {"clear": 0.45}' in history  # the text stored in runs
    assert root.find("crs/spatialrefsys/authid").text == "EPSG:32633"
    prov = provenance(gpkg)
    assert prov["schema_version"] == SCHEMA_VERSION
    assert prov["run"]["run_id"] == "abc123"
    assert prov["run"]["thresholds"] == {"clear": 0.45}  # as JSON, not JSON text
    assert prov["layers"] == list(schema.layers)


def test_metadata_is_a_valid_registered_extension_that_gdal_reads(gpkg, spec):
    amend(gpkg, metadata.add_metadata, spec, fake_run(run_id="r1"))
    amend(gpkg, metadata.add_metadata, spec, fake_run(run_id="r2"))  # replaces
    con = sqlite3.connect(gpkg)
    ext = {r[0] for r in con.execute("SELECT table_name FROM gpkg_extensions WHERE extension_name='gpkg_metadata'")}
    n_md = con.execute("SELECT count(*) FROM gpkg_metadata").fetchone()[0]
    n_ref = con.execute("SELECT count(*) FROM gpkg_metadata_reference").fetchone()[0]
    desc = con.execute("SELECT description FROM gpkg_contents WHERE table_name=?", (RUNS_LAYER,)).fetchone()[0]
    con.close()
    assert ext == {"gpkg_metadata", "gpkg_metadata_reference"}
    assert n_md == n_ref == len(OutputSchema(spec.labels).layers) + 1
    assert provenance(gpkg)["run"]["run_id"] == "r2"
    assert f"schema v{SCHEMA_VERSION}" in desc
    info = pyogrio.read_info(gpkg, layer=CHIPS_LAYER)
    items = [v for k, v in (info.get("layer_metadata") or {}).items() if k.startswith("GPKG_METADATA_ITEM_")]
    assert any("<identifier>chips</identifier>" in v for v in items)


def test_geopackage_is_version_1_2(gpkg):
    con = sqlite3.connect(gpkg)
    assert con.execute("PRAGMA user_version").fetchone()[0] == 10200
    assert con.execute("PRAGMA application_id").fetchone()[0] == 0x47504B47  # 'GPKG'
    con.close()


def test_a_file_that_is_no_database_raises_sqlite_errors(tmp_path, spec):
    bad = tmp_path / "bad.gpkg"
    bad.write_bytes(b"not a database" * 100)
    with pytest.raises(sqlite3.DatabaseError):
        amend(bad, metadata.add_metadata, spec, fake_run())
    with pytest.raises(sqlite3.DatabaseError):
        amend(bad, styles.add_styles, spec)


def test_readers_create_no_file(tmp_path):
    with pytest.raises(sqlite3.OperationalError):
        styles.read_styles(tmp_path / "absent.gpkg")
    with pytest.raises(sqlite3.OperationalError):
        metadata.read_metadata(tmp_path / "absent.gpkg")
    assert list(tmp_path.iterdir()) == []


def test_the_writer_reports_a_failed_style_store_and_leaves_nothing(tmp_path, spec, monkeypatch):
    from scenetag.errors import OutputError

    def locked(*args, **kwargs):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(styles, "write_styles", locked)
    with pytest.raises(OutputError, match="could not write .*database is locked"):
        write_synthetic_gpkg(tmp_path / "s.gpkg", spec)
    assert list(tmp_path.iterdir()) == []


def test_the_writer_opens_sqlite_once_after_gdal(tmp_path, spec, monkeypatch):
    from scenetag.outputs_schema import geopackage

    opened = []
    real = sqlite3.connect
    monkeypatch.setattr(geopackage.sqlite3, "connect", lambda *a, **k: opened.append(a) or real(*a, **k))
    write_synthetic_gpkg(tmp_path / "once.gpkg", spec)
    # Once to the GeoPackage being written; the others read the one-layer files of the label layers.
    assert len([a for a in opened if not str(a[0]).endswith(".layer.gpkg")]) == 1
