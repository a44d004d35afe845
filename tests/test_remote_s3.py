"""Scenes in object storage: moto's S3 server on 127.0.0.1, real scenes in a bucket, GDAL and s3fs against it."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

from scenetag.errors import RemoteSceneError
from scenetag.jobs.batch import run_batch
from scenetag.jobs.failures import is_retryable
from scenetag.jobs.inputs import expand_inputs, output_paths
from scenetag.jobs.options import RunOptions
from scenetag.jobs.runner import run_scene
from tests.cli_helpers import invoke
from tests.conftest import real_scene
from tests.remote_fixtures import S3_UNSET, chips, moto_server, s3_client, s3_environment, scenes_or_skip, set_env

#: The shared fixtures (``server``, ``predictor``) of tests/remote_fixtures.py.
pytest_plugins = ("tests.remote_fixtures",)

BUCKET = "scenes"
NAMES = ("landsat8_rgb16.tif", "drone_rgba_alpha.tif")


@pytest.fixture(scope="module")
def s3():
    scenes_or_skip()
    with moto_server() as (host, port):
        client = s3_client(host, port)
        client.create_bucket(Bucket=BUCKET)
        for name in NAMES:
            client.upload_file(str(real_scene(name)), BUCKET, f"drop/{name}")
        client.upload_file(str(real_scene("landsat7_rgb_byte.tif")), BUCKET, "drop/deeper/landsat7_rgb_byte.tif")
        client.put_object(Bucket=BUCKET, Key="drop/notes.txt", Body=b"not a scene")
        yield host, port, client


@pytest.fixture
def s3_env(s3, monkeypatch):
    """GDAL's S3 variables for the loopback endpoint (s3fs takes the endpoint from them, see tiler.cloud)."""
    host, port, client = s3
    set_env(monkeypatch, s3_environment(host, port), S3_UNSET)
    return client


def test_run_of_an_s3_object_gives_the_local_geopackage(s3_env, predictor, tmp_path):
    name = "landsat8_rgb16.tif"
    run_scene(str(real_scene(name)), str(tmp_path / "local.gpkg"), predictor, RunOptions())
    result = run_scene(f"s3://{BUCKET}/drop/{name}", str(tmp_path / "s3.gpkg"), predictor, RunOptions())
    a, b = chips(tmp_path / "local.gpkg"), chips(tmp_path / "s3.gpkg")
    probs = [c for c in a.columns if c.startswith("p_")]
    assert len(a) == len(b) == result.n_chips_classified > 0
    np.testing.assert_allclose(a[probs].to_numpy(), b[probs].to_numpy(), atol=1e-6, rtol=0)
    con = sqlite3.connect(tmp_path / "s3.gpkg")
    path, source = con.execute("SELECT scene_path, scene_source FROM runs").fetchone()
    con.close()
    identity = json.loads(source)["identity"]
    assert path == f"s3://{BUCKET}/drop/{name}"
    assert identity["kind"] == "etag" and identity["etag"] and identity["size"] == real_scene(name).stat().st_size


def test_cli_run_of_a_vsis3_path(s3_env, tiny_model, tmp_path):
    out = tmp_path / "d.gpkg"
    res = invoke("-q", "run", f"/vsis3/{BUCKET}/drop/drone_rgba_alpha.tif", "-o", out, "--model", tiny_model,
                 "--no-progress")
    assert res.exit_code == 0, res.output
    assert "chips classified" in res.output and len(chips(out)) > 0


def test_a_missing_object_fails_in_one_line_and_is_not_retried(s3_env, tiny_model, tmp_path):
    res = invoke("-q", "run", f"s3://{BUCKET}/drop/missing.tif", "-o", tmp_path / "m.gpkg", "--model", tiny_model)
    assert res.exit_code == 1
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert lines == [f"Error: scene 's3://{BUCKET}/drop/missing.tif' was not found (HTTP 404): check the URL"]
    from scenetag.hashing import scene_identity

    with pytest.raises(RemoteSceneError) as err:
        scene_identity(f"s3://{BUCKET}/drop/missing.tif")
    assert err.value.status == 404 and not is_retryable(err.value)


def test_prefixes_and_globs_are_listed_through_fsspec(s3_env):
    prefix = expand_inputs([f"s3://{BUCKET}/drop/"])
    assert prefix == [f"s3://{BUCKET}/drop/{n}" for n in sorted(NAMES)]  # not recursive, rasters only
    assert expand_inputs([f"/vsis3/{BUCKET}/drop/"]) == prefix  # GDAL's spelling of the prefix too
    deep = expand_inputs([f"s3://{BUCKET}/drop/**/*.tif"])
    assert f"s3://{BUCKET}/drop/deeper/landsat7_rgb_byte.tif" in deep and len(deep) == 3
    assert [p.name for p in output_paths(deep, "/out")] == [u.rsplit("/", 1)[1].replace(".tif", ".gpkg")
                                                             for u in deep]
    assert expand_inputs([f"s3://{BUCKET}/nothing/*.tif"]) == []


def test_batch_over_a_prefix_then_a_rerun_skips_everything_and_a_changed_object_is_redone(s3_env, predictor,
                                                                                          tmp_path):
    client = s3_env
    out = tmp_path / "out"
    kw = dict(workers=1, threads=2, dashboard_address=None)
    first = run_batch([f"s3://{BUCKET}/drop/"], out, predictor, RunOptions(), **kw)
    assert sorted(str(s.status) for s in first.scenes) == ["ok", "ok"]
    assert sorted(p.name for p in out.glob("*.gpkg")) == ["drone_rgba_alpha.gpkg", "landsat8_rgb16.gpkg"]

    again = run_batch([f"s3://{BUCKET}/drop/"], out, predictor, RunOptions(), **kw)
    assert [str(s.status) for s in again.scenes] == ["skipped", "skipped"]
    assert all(s.chips == 0 and s.strips == 0 for s in again.scenes)  # decided before planning: no pixel read

    # A new object under the same key (other bytes, a new ETag) is redone; the other is still current.
    client.upload_file(str(real_scene("landsat7_rgb_byte.tif")), BUCKET, "drop/landsat8_rgb16.tif")
    third = run_batch([f"s3://{BUCKET}/drop/"], out, predictor, RunOptions(), **kw)
    by_name = {s.scene.rsplit("/", 1)[1]: str(s.status) for s in third.scenes}
    assert by_name == {"drone_rgba_alpha.tif": "skipped", "landsat8_rgb16.tif": "ok"}
    # Put the original back for the other tests of the module.
    client.upload_file(str(real_scene("landsat8_rgb16.tif")), BUCKET, "drop/landsat8_rgb16.tif")
