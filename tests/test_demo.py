"""The demo scene in the repository: what `make run` classifies on a fresh machine, without ../shared."""

from __future__ import annotations

import hashlib
import subprocess
import xml.etree.ElementTree as ET

import pyogrio
import rasterio

from scenetag.outputs_schema.project import read_project
from tests.cli_helpers import invoke
from tests.conftest import ROOT, SCENES

DEMO = ROOT / "demo"
SCENE = DEMO / "planetscope_borneo_3m_analytic.tif"


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_demo_scene_ships_with_its_licence_and_attribution():
    assert SCENE.is_file() and (DEMO / "planetscope_borneo_3m_analytic_metadata.xml").is_file()
    assert "Apache License" in (DEMO / "LICENSE-Apache-2.0").read_text()
    readme = (DEMO / "README.md").read_text()
    assert "Apache License 2.0" in readme and "Planet Labs" in readme
    assert SCENE.stat().st_size < 2_200_000  # small: about 0.5 MB in a clone, git compresses it
    with rasterio.open(SCENE) as src:
        assert (src.width, src.height, src.count, src.dtypes[0]) == (512, 512, 4, "uint16")
        assert src.crs.to_epsg() == 32649 and src.res == (3.0, 3.0)
    shared = SCENES / SCENE.name
    if shared.exists():  # "copied unchanged", as the README says
        assert sha256(shared) == sha256(SCENE)


def test_make_run_classifies_the_demo_scene_by_default():
    dry = subprocess.run(["make", "-n", "run", "DATA=/nonexistent"], cwd=ROOT, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert 'scene="demo/planetscope_borneo_3m_analytic.tif"; bands="--bands 3,2,1"' in dry.stdout
    assert "earthpy" not in dry.stdout


def test_the_first_run_is_in_the_models_domain_and_makes_a_map(tmp_path):
    out = tmp_path / "planetscope_borneo_3m_analytic.gpkg"
    result = invoke("run", SCENE, "-o", out, "--bands", "3,2,1", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "1 chip classified, 3 skipped (nodata)" in result.output
    assert "m/pixel" not in result.output  # no resolution warning (the log goes to the same output)
    assert len(pyogrio.read_dataframe(out, layer="chips")) == 1
    name, qgs = read_project(out)
    assert name == "planetscope_borneo_3m_analytic"
    root = ET.fromstring(qgs.split("\n", 1)[1])
    [source] = [ml.find("datasource").text for ml in root.iter("maplayer") if ml.find("layername").text == "scene"]
    assert source.startswith("../")  # relative to the GeoPackage, as QGIS resolves it
    assert (out.parent / source).resolve() == SCENE.resolve()
