"""Scenes over HTTP, from a real server on 127.0.0.1 with Range support: same outputs, few bytes, clear errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import rasterio

from scenetag.errors import RemoteSceneError
from scenetag.jobs.failures import is_retryable
from scenetag.jobs.options import RunOptions
from scenetag.jobs.runner import run_scene
from tests.cli_helpers import invoke
from tests.conftest import real_scene
from tests.remote_fixtures import chips, closed_port, runs, scene_server

#: The shared fixtures (``server``, ``predictor``) of tests/remote_fixtures.py.
pytest_plugins = ("tests.remote_fixtures",)

#: Real scenes of each kind of validity: internal tiles (uint16), an alpha band, nodata (uint16, 4 bands).
CASES = {"landsat8_rgb16.tif": None, "drone_rgba_alpha.tif": None, "planetscope_borneo_3m_analytic.tif": (3, 2, 1)}


def assert_same_chips(a, b):
    a, b = chips(a), chips(b)
    assert len(a) == len(b) > 0
    assert list(a["scene_id"]) == list(b["scene_id"])
    assert list(a["tags"]) == list(b["tags"])
    probs = [c for c in a.columns if c.startswith("p_")]
    np.testing.assert_allclose(a[probs].to_numpy(), b[probs].to_numpy(), atol=1e-6, rtol=0)
    assert a.geometry.geom_equals_exact(b.geometry, 1e-9).all()


@pytest.mark.parametrize("name", sorted(CASES))
def test_run_over_http_gives_the_local_geopackage(server, predictor, tmp_path, name):
    bands = CASES[name]
    opts = RunOptions(bands=bands)
    local = run_scene(str(real_scene(name)), str(tmp_path / "local.gpkg"), predictor, opts)
    remote = run_scene(server.url(name), str(tmp_path / "remote.gpkg"), predictor, opts)
    assert remote.n_chips_classified == local.n_chips_classified
    assert_same_chips(tmp_path / "local.gpkg", tmp_path / "remote.gpkg")
    row = runs(tmp_path / "remote.gpkg")
    assert row["scene_path"] == server.url(name)  # the URL as given, never folded to http:/
    source = json.loads(row["scene_source"])
    assert source["identity"]["kind"] == "etag" and source["identity"]["etag"]
    assert json.loads(runs(tmp_path / "local.gpkg")["scene_source"])["identity"]["kind"] == "sha256"


def test_cli_run_of_a_signed_vsicurl_url_names_the_output_and_never_shows_the_signature(server, tiny_model, tmp_path,
                                                                                       monkeypatch):
    monkeypatch.chdir(tmp_path)
    url = f"/vsicurl/{server.url('landsat8_rgb16.tif')}?X-Amz-Signature=SECRET123&X-Amz-Credential=KEY"
    res = invoke("-v", "run", url, "--model", tiny_model, "--no-progress")
    assert res.exit_code == 0, res.output
    out = tmp_path / "landsat8_rgb16.gpkg"  # named by the URL path's stem, not the query
    assert "SECRET123" not in res.output and str(out) in res.output
    row = runs(out)
    assert "SECRET" not in json.dumps(row)
    assert row["scene_path"] == f"/vsicurl/{server.url('landsat8_rgb16.tif')}"


@pytest.fixture
def masked_tiles(tmp_path):
    """A real-derived tiled scene: landsat7's pixels repeated to 2048x2048 (uint8 RGB, 256-pixel tiles,
    DEFLATE) with an internal mask that is valid only in its top-left 512x512 (4 of its 64 tiles)."""
    src_path = real_scene("landsat7_rgb_byte.tif")
    with rasterio.open(src_path) as src:
        data = src.read()
        profile = src.profile
    big = np.tile(data, (1, 3, 3))[:, :2048, :2048].copy()
    big[big == 0] = 1  # the mask alone says what is valid
    mask = np.zeros((2048, 2048), np.uint8)
    mask[:512, :512] = 255
    folder = tmp_path / "served"
    folder.mkdir()
    path = folder / "masked_tiles.tif"
    profile.update(driver="GTiff", width=2048, height=2048, tiled=True, blockxsize=256, blockysize=256,
                   compress="DEFLATE", nodata=None)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as dst:
        dst.write(big)
        dst.write_mask(mask)
    return path


def test_a_tiled_scene_run_fetches_a_small_multiple_of_its_classified_pixels(masked_tiles, predictor, tmp_path):
    """Chips outside the mask cost their mask tiles only: the run fetches the 4 valid tiles, not the file."""
    with scene_server(masked_tiles.parent) as server:
        result = run_scene(server.url(masked_tiles.name), str(tmp_path / "c.gpkg"), predictor, RunOptions())
        served = server.served
    chip = predictor.spec.chip_size
    assert result.n_chips_classified == (512 // chip) ** 2
    classified_bytes = result.n_chips_classified * chip * chip * 3
    size = masked_tiles.stat().st_size
    assert served.bytes < 2 * classified_bytes, (served.bytes, classified_bytes)
    assert served.bytes < 0.2 * size, (served.bytes, size)
    assert served.requests < 100, served.requests


def test_a_striped_remote_scene_is_warned_about(server, predictor, tmp_path):
    result = run_scene(server.url("landsat7_rgb_byte.tif"), str(tmp_path / "s.gpkg"), predictor, RunOptions())
    assert any("not cloud-optimised" in w and "gdal_translate -of COG" in w for w in result.warnings)
    assert any("not cloud-optimised" in w for w in json.loads(runs(tmp_path / "s.gpkg")["warnings"]))


def _errors(server) -> dict:
    return {
        "404": (server.url("nothing_here.tif"), "was not found (HTTP 404): check the URL", False),
        "403": (server.url("status/403/scene.tif"), "access denied (HTTP 403)", False),
        "503": (server.url("status/503/scene.tif"), "HTTP 503", True),
        "html": (server.url("html/scene.tif"), "is an HTML page, not a raster", False),
        "loop": (server.url("loop/scene.tif"), "redirects in a loop", False),
        "refused": (f"http://127.0.0.1:{closed_port()}/scene.tif", "refused the connection", True),
        "dns": ("http://no-such-host.invalid/scene.tif", "was not found (DNS)", True),
        "timeout": (server.url("slow/scene.tif"), "(timeout)", True),
    }


@pytest.mark.parametrize("case", ["404", "403", "503", "html", "loop", "refused", "dns", "timeout"])
def test_bad_urls_fail_in_one_line_and_only_transient_ones_are_retried(server, tiny_model, tmp_path, monkeypatch,
                                                                       case):
    monkeypatch.setenv("GDAL_HTTP_TIMEOUT", "1")
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "0")
    url, message, transient = _errors(server)[case]
    out = tmp_path / "x.gpkg"
    res = invoke("-q", "run", url, "-o", out, "--model", tiny_model, "--no-progress")
    assert res.exit_code == 1
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: scene ") and message in lines[0], res.output
    assert "Traceback" not in res.output and not out.exists()
    from scenetag.hashing import scene_identity

    with pytest.raises(RemoteSceneError) as err:
        scene_identity(url)
    assert is_retryable(err.value) is transient


def test_batch_over_urls_reruns_without_reading_pixels_and_redoes_a_changed_object(predictor, tmp_path):
    served_dir = tmp_path / "served"
    served_dir.mkdir()
    for name in ("landsat8_rgb16.tif", "drone_rgba_alpha.tif"):
        shutil.copy(real_scene(name), served_dir / name)
    from scenetag.jobs.batch import run_batch

    with scene_server(served_dir) as server:
        listing = tmp_path / "scenes.txt"
        listing.write_text("".join(f"{server.url(n)}?token=SECRET\n" for n in sorted(p.name for p in served_dir.iterdir())))
        out = tmp_path / "out"
        first = run_batch([str(listing)], out, predictor, RunOptions(), scheduler=None, workers=1, threads=2,
                          dashboard_address=None)
        assert [str(s.status) for s in first.scenes] == ["ok", "ok"]
        assert sorted(p.name for p in out.glob("*.gpkg")) == ["drone_rgba_alpha.gpkg", "landsat8_rgb16.gpkg"]
        report = (out / "batch-report.json").read_text()
        assert "SECRET" not in report and server.url("drone_rgba_alpha.tif") in report

        server.reset()
        again = run_batch([str(listing)], out, predictor, RunOptions(), scheduler=None, workers=1, threads=2,
                          dashboard_address=None)
        assert [str(s.status) for s in again.scenes] == ["skipped", "skipped"]
        # One small ranged request per scene (its ETag), no pixels.
        assert server.served.requests == 2 and server.served.bytes <= 2 * 16, server.served

        with rasterio.open(served_dir / "drone_rgba_alpha.tif", "r+") as ds:  # a new object: new bytes, new ETag
            ds.update_tags(changed="yes")
        third = run_batch([str(listing)], out, predictor, RunOptions(), scheduler=None, workers=1, threads=2,
                          dashboard_address=None)
        by_name = {s.scene.rsplit("/", 1)[1]: str(s.status) for s in third.scenes}
        assert by_name == {"drone_rgba_alpha.tif": "ok", "landsat8_rgb16.tif": "skipped"}


def test_batch_records_a_bad_url_as_a_failed_scene_and_goes_on(server, predictor, tmp_path, monkeypatch):
    from scenetag.jobs.batch import run_batch

    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "0")  # the job's retries only, not GDAL's own inside a read
    report = run_batch([server.url("status/404/gone.tif"), server.url("status/503/busy.tif"),
                        server.url("landsat8_rgb16.tif")], tmp_path / "out",
                       predictor, RunOptions(), workers=1, threads=2, retries=2, dashboard_address=None)
    gone, busy, ok = report.scenes
    assert str(gone.status) == "failed" and "HTTP 404" in gone.error and gone.attempts == 1  # 404: never retried
    assert str(busy.status) == "failed" and "HTTP 503" in busy.error and busy.attempts == 3  # 503: tried again
    assert str(ok.status) == "ok"


def test_gdals_http_credentials_serve_the_identity_request_too(server, predictor, tmp_path, monkeypatch):
    url = server.url("auth/landsat8_rgb16.tif")
    with pytest.raises(RemoteSceneError, match=r"access denied \(HTTP 401\)"):
        run_scene(url, str(tmp_path / "no.gpkg"), predictor, RunOptions())
    monkeypatch.setenv("GDAL_HTTP_AUTH", "BEARER")
    monkeypatch.setenv("GDAL_HTTP_BEARER", "good-token")
    url += "?again=1"  # GDAL remembers the 401 of a URL for the life of the process
    result = run_scene(url, str(tmp_path / "a.gpkg"), predictor, RunOptions())
    assert result.n_chips_classified > 0
    from scenetag.hashing import scene_identity

    assert scene_identity(url).kind == "etag"
    assert "good-token" not in json.dumps(runs(tmp_path / "a.gpkg"))
