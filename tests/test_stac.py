"""STAC items as scenes: items written with pystac, assets on a loopback HTTP server; asset choice, names, provenance."""

from __future__ import annotations

import json
import shutil

import pyogrio
import pytest

from scenetag.errors import StacError
from scenetag.jobs.inputs import expand_inputs, output_paths
from scenetag.jobs.options import RunOptions
from scenetag.jobs.runner import run_scene
from scenetag.jobs.stac import choose_asset, read_item
from tests.cli_helpers import invoke
from tests.conftest import real_scene
from tests.remote_fixtures import runs, scene_server, stac_item

#: The shared fixtures (``server``, ``predictor``) of tests/remote_fixtures.py.
pytest_plugins = ("tests.remote_fixtures",)

RGB = ("red", "green", "blue")
PLANET = ("blue", "green", "red", "nir")


def rgb_spec():
    from tests.model_fixtures import tiny_spec

    return tiny_spec()


def choose(tmp_path, assets, bands=None, asset=None, band_option=None):
    path = stac_item(tmp_path / "item.json", "it-1", assets, bands=bands)
    item, href = read_item(str(path))
    return choose_asset(item, href, rgb_spec(), asset, band_option)


def test_the_asset_whose_bands_are_the_models_is_chosen_and_why(tmp_path):
    c = choose(tmp_path, {"visual": "v.tif", "analytic": "a.tif", "thumbnail": "t.png"},
               bands={"visual": RGB, "analytic": PLANET})
    assert c.key == "visual" and c.bands is None and "are the model's" in c.reason
    assert c.href == str(tmp_path / "v.tif")  # relative hrefs from the item's place


def test_with_bands_the_asset_whose_bands_at_those_numbers_are_the_models(tmp_path):
    c = choose(tmp_path, {"visual": "v.tif", "analytic": "a.tif"}, bands={"visual": ("red", "red", "red"),
                                                                           "analytic": PLANET}, band_option=(3, 2, 1))
    assert c.key == "analytic" and "--bands 3,2,1" in c.reason


def test_an_asset_holding_the_models_bands_is_read_at_the_bands_its_metadata_names(tmp_path):
    c = choose(tmp_path, {"analytic": "a.tif", "udm": "u.tif"}, bands={"analytic": PLANET, "udm": ("mask",)})
    assert c.key == "analytic" and c.bands == (3, 2, 1) and "bands 3,2,1 of blue, green, red, nir" in c.reason


@pytest.mark.parametrize("assets, bands, asset, message", [
    ({"thumbnail": "t.png"}, None, None, "has no image asset GDAL can read (its assets: thumbnail)"),
    ({"a": "a.tif", "b": "b.tif"}, {"a": RGB, "b": RGB}, None, "has 2 assets whose bands fit the model (a, b)"),
    ({"a": "a.tif", "b": "b.tif"}, None, None, "has 2 candidate assets (a, b) that do not say their bands"),
    ({"b04": "b4.tif"}, {"b04": ("red",)}, None, "no asset of STAC item 'it-1' has the model's bands"),
    ({"b04": "b4.tif"}, {"b04": ("red",)}, "b04", "asset 'b04' of STAC item 'it-1' has the bands red"),
    ({"visual": "v.tif"}, None, "analytic", "has no asset 'analytic': its assets are visual"),
])
def test_unusable_items_are_refused_naming_the_fix(tmp_path, assets, bands, asset, message):
    with pytest.raises(StacError) as err:
        choose(tmp_path, assets, bands=bands, asset=asset)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_run_of_an_item_names_the_output_by_its_id_and_keeps_its_provenance(server, tiny_model, tmp_path,
                                                                           monkeypatch):
    item = stac_item(tmp_path / "items" / "l8.json", "LC08_test_item",
                     {"visual": server.url("landsat8_rgb16.tif"), "thumbnail": server.url("none.png")},
                     bands={"visual": RGB}, updated="2024-06-01T00:00:00Z")
    monkeypatch.chdir(tmp_path)
    res = invoke("-q", "run", item, "--model", tiny_model, "--no-progress")
    assert res.exit_code == 0, res.output
    out = tmp_path / "LC08_test_item.gpkg"
    assert out.exists()
    assert set(pyogrio.read_dataframe(out, layer="chips", read_geometry=False)["scene_id"]) == {"LC08_test_item"}
    row = runs(out)
    source = json.loads(row["scene_source"])
    assert source["stac"]["item"] == "LC08_test_item" and source["stac"]["collection"] == "test-collection"
    assert source["stac"]["datetime"].startswith("2024-05-01T10:00:00")
    assert source["stac"]["asset"] == "visual" and "are the model's" in source["stac"]["asset_reason"]
    assert source["identity"]["kind"] == "stac" and source["identity"]["updated"] == "2024-06-01T00:00:00Z"
    assert row["scene_path"] == server.url("landsat8_rgb16.tif")


def test_run_of_an_item_url_matches_the_file(server, predictor, tmp_path):
    folder = tmp_path / "served"
    folder.mkdir()
    shutil.copy(real_scene("landsat8_rgb16.tif"), folder / "scene.tif")
    stac_item(folder / "item.json", "by-url", {"data": "scene.tif"})  # a relative href, from the item's URL
    with scene_server(folder) as s:
        result = run_scene(s.url("item.json"), str(tmp_path / "u.gpkg"), predictor, RunOptions())
        local = run_scene(str(folder / "scene.tif"), str(tmp_path / "l.gpkg"), predictor, RunOptions())
    assert result.n_chips_classified == local.n_chips_classified > 0
    source = json.loads(runs(tmp_path / "u.gpkg")["scene_source"])
    assert source["stac"]["asset_reason"] == "the only image asset (it does not say its bands)"
    assert source["identity"]["kind"] == "etag"  # no updated time nor checksum: the asset's own identity


def test_batch_takes_a_folder_of_items_an_item_collection_and_a_list_of_item_urls(server, tmp_path):
    import pystac

    folder = tmp_path / "items"
    a = stac_item(folder / "a.json", "item-a", {"visual": server.url("landsat8_rgb16.tif")})
    b = stac_item(folder / "b.json", "item-b", {"visual": server.url("drone_rgba_alpha.tif")})
    (folder / "batch-report.json").write_text('{"not": "stac"}')
    found = expand_inputs([str(folder)])
    assert [p.name for p in output_paths(found, tmp_path / "out")] == ["item-a.gpkg", "item-b.gpkg"]

    collection = pystac.ItemCollection([pystac.Item.from_file(str(a)), pystac.Item.from_file(str(b))])
    collection.save_object(str(tmp_path / "collection.json"))
    found = expand_inputs([str(tmp_path / "collection.json")])
    assert found == [f"{tmp_path / 'collection.json'}#item-a", f"{tmp_path / 'collection.json'}#item-b"]

    listing = tmp_path / "items.txt"
    listing.write_text(f"{server.url('no-item.json')}\n")
    with pytest.raises(Exception) as err:
        expand_inputs([str(listing)])
    assert "HTTP 404" in str(err.value)


def test_batch_over_an_item_collection_runs_each_item_and_skips_them_on_a_rerun(server, predictor, tmp_path):
    import pystac

    from scenetag.jobs.batch import run_batch

    a = stac_item(tmp_path / "a.json", "item-a", {"visual": server.url("landsat8_rgb16.tif")},
                  updated="2024-01-01T00:00:00Z")
    b = stac_item(tmp_path / "b.json", "item-b", {"visual": server.url("drone_rgba_alpha.tif")})
    pystac.ItemCollection([pystac.Item.from_file(str(a)), pystac.Item.from_file(str(b))]).save_object(
        str(tmp_path / "c.json"))
    kw = dict(workers=1, threads=2, dashboard_address=None)
    first = run_batch([str(tmp_path / "c.json")], tmp_path / "out", predictor, RunOptions(), **kw)
    assert [str(s.status) for s in first.scenes] == ["ok", "ok"]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.gpkg")) == ["item-a.gpkg", "item-b.gpkg"]
    again = run_batch([str(tmp_path / "c.json")], tmp_path / "out", predictor, RunOptions(), **kw)
    assert [str(s.status) for s in again.scenes] == ["skipped", "skipped"]


def test_cli_asset_option_and_its_errors(server, tiny_model, tmp_path):
    item = stac_item(tmp_path / "i.json", "two", {"left": server.url("landsat8_rgb16.tif"),
                                                  "right": server.url("drone_rgba_alpha.tif")})
    res = invoke("-q", "run", item, "-o", tmp_path / "x.gpkg", "--model", tiny_model, "--no-progress")
    assert res.exit_code == 1 and not (tmp_path / "x.gpkg").exists()
    assert res.output.strip() == ("Error: STAC item 'two' has 2 candidate assets (left, right) that do not say "
                                  "their bands: choose one with --asset")
    res = invoke("-q", "run", item, "-o", tmp_path / "x.gpkg", "--model", tiny_model, "--no-progress",
                 "--asset", "right")
    assert res.exit_code == 0, res.output
    assert json.loads(runs(tmp_path / "x.gpkg")["scene_source"])["stac"]["asset_reason"] == "--asset right"
