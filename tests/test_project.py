"""The QGIS project the writer stores in the GeoPackage (no QGIS needed; tests/test_qgis.py opens it in QGIS)."""

from __future__ import annotations

import io
import json
import sqlite3
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pyogrio
import pytest

from scenetag.errors import OutputError
from scenetag.outputs_schema import project, styles
from scenetag.outputs_schema.project import PROJECT_TABLE, _source, read_project
from scenetag.outputs_schema.schema import CHIPS_LAYER, OutputSchema
from tests.model_fixtures import tiny_spec
from tests.qgis_fixtures import fake_run, synthetic_table


def write(out: Path, spec, scene_path: str, **run):
    from affine import Affine
    from rasterio.crs import CRS

    from scenetag.outputs_schema.geopackage import write_geopackage

    options = {"bands_used": [3, 2, 1], "stretch": {"low": [1.0, 2.0, 3.0], "high": [10.0, 20.0, 30.0]}}
    write_geopackage(out, table=synthetic_table(3, 4, spec.n_labels), spec=spec, scene_id="s",
                     transform=Affine(10.0, 0, 500000.0, 0, -10.0, 4000000.0), crs=CRS.from_epsg(32633),
                     run=fake_run(scene_path=scene_path, options=options, **run))
    return out


def canonical(element: ET.Element) -> str:
    return ET.canonicalize(ET.tostring(element, encoding="unicode"), strip_text=True)


@pytest.fixture
def spec():
    return tiny_spec()


def test_the_project_is_stored_as_qgis_stores_it(tmp_path, spec):
    scene = tmp_path / "scenes" / "borneo.tif"
    (tmp_path / "out").mkdir()
    gpkg = write(tmp_path / "out" / "b.gpkg", spec, str(scene))
    con = sqlite3.connect(gpkg)
    columns = [(r[1], r[2], r[5]) for r in con.execute(f"PRAGMA table_info({PROJECT_TABLE})")]
    [(name, metadata, content)] = con.execute(f"SELECT name, metadata, content FROM {PROJECT_TABLE}").fetchall()
    registered = con.execute("SELECT count(*) FROM gpkg_contents WHERE table_name=?", (PROJECT_TABLE,)).fetchone()
    con.close()
    assert columns == [("name", "TEXT", 1), ("metadata", "BLOB", 0), ("content", "BLOB", 0)]
    assert name == "borneo"
    assert set(json.loads(metadata)) == {"last_modified_time", "last_modified_user"}
    with zipfile.ZipFile(io.BytesIO(bytes.fromhex(content))) as zf:  # hex text of the .qgz, as QGIS writes it
        assert zf.namelist() == ["borneo.qgs"]
    assert registered == (0,)  # as QGIS leaves it: GDAL lists no extra layer
    assert PROJECT_TABLE not in [n for n, _ in pyogrio.list_layers(gpkg)]


def test_the_project_holds_the_layers_in_their_default_styles_and_the_scene(tmp_path, spec):
    (tmp_path / "out").mkdir()
    scene = tmp_path / "scenes" / "borneo.tif"
    gpkg = write(tmp_path / "out" / "b.gpkg", spec, str(scene))
    name, qgs = read_project(gpkg)
    root = ET.fromstring(qgs.split("\n", 1)[1])
    schema = OutputSchema(spec.labels)
    layers = {ml.find("layername").text: ml for ml in root.iter("maplayer")}
    assert list(layers) == [CHIPS_LAYER, *schema.label_layers, "scene"]
    defaults = {r["f_table_name"]: r["styleQML"] for r in styles.read_styles(gpkg) if r["useAsDefault"]}
    for layer in (CHIPS_LAYER, *schema.label_layers):
        ml = layers[layer]
        assert ml.find("datasource").text == f"./b.gpkg|layername={layer}"  # moves with the GeoPackage
        stored = ET.fromstring(defaults[layer].split("\n", 1)[1]).find("renderer-v2")
        assert canonical(ml.find("renderer-v2")) == canonical(stored)
    scene_layer = layers["scene"]
    assert scene_layer.find("datasource").text == "../scenes/borneo.tif"
    r = scene_layer.find("pipe/rasterrenderer")
    assert (r.get("type"), r.get("redBand"), r.get("greenBand"), r.get("blueBand")) == ("multibandcolor", "3", "2", "1")
    assert [float(r.find(f"{c}ContrastEnhancement/{m}").text) for c in ("red", "blue") for m in
            ("minValue", "maxValue")] == [1.0, 10.0, 3.0, 30.0]
    group = root.find("layer-tree-group/layer-tree-group")
    assert group.get("name") == "labels" and group.get("expanded") == "0"
    assert [n.get("name") for n in group] == [None, *schema.label_layers]  # customproperties, then layers
    assert root.find("properties/SpatialRefSys/ProjectionsEnabled").text == "1"
    assert root.find("projectCrs/spatialrefsys/authid").text == "EPSG:32633"


@pytest.mark.parametrize("path, want", [
    ("/vsis3/bucket/scene.tif", "/vsis3/bucket/scene.tif"),
    ("https://example.org/scene.tif", "https://example.org/scene.tif"),
    ("relative/scene.tif", "relative/scene.tif"),
])
def test_scenes_that_are_no_local_files_are_named_as_given(tmp_path, path, want):
    assert _source(path, tmp_path / "x.gpkg") == want


def test_a_failed_project_write_leaves_nothing(tmp_path, spec, monkeypatch):
    def locked(*args, **kwargs):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(project, "add_project", locked)
    with pytest.raises(OutputError, match="database is locked"):
        write(tmp_path / "b.gpkg", spec, "/data/scene.tif")
    assert list(tmp_path.iterdir()) == []
