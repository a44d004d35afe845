"""A scene's outputs: which files, refused before any work, up to date or not, written together."""

from __future__ import annotations

import os

import numpy as np
import pyogrio
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS

from scenetag.errors import OutputError, OutputExistsError
from scenetag.model.spec import ModelSpec
from scenetag.outputs_schema.outputs import SceneFrame, SceneOutputs
from scenetag.outputs_schema.records import ChipTable
from scenetag.outputs_schema.run_record import read_run_record
from tests.qgis_fixtures import fake_run, synthetic_table

SPEC = ModelSpec.create("m", "a", ["water", "road"], 0.5)
TABLE = synthetic_table(3, 4, SPEC.n_labels)
FRAME = SceneFrame("s", Affine(10.0, 0, 500000.0, 0, -10.0, 4000000.0), CRS.from_epsg(32633), (3, 4), 64, 64)


def write(outputs: SceneOutputs, signature: str = "sig", overwrite: bool = False):
    return outputs.write(TABLE, SPEC, FRAME, fake_run(signature=signature), overwrite=overwrite)


def test_paths_are_every_file_written(tmp_path):
    assert SceneOutputs(tmp_path / "a.gpkg").paths == (tmp_path / "a.gpkg",)
    both = SceneOutputs(str(tmp_path / "a.gpkg"), raster=True)
    assert both.gpkg == tmp_path / "a.gpkg"
    assert both.paths == (tmp_path / "a.gpkg", tmp_path / "a_prob.tif")


def test_a_name_not_ending_in_gpkg_is_refused():
    with pytest.raises(OutputError, match="'x.shp' must end in .gpkg"):
        SceneOutputs("x.shp")


@pytest.mark.parametrize("existing", ["a.gpkg", "a_prob.tif"])
def test_an_existing_output_is_refused_without_overwrite(tmp_path, existing):
    (tmp_path / existing).write_bytes(b"keep")
    outputs = SceneOutputs(tmp_path / "a.gpkg", raster=True)
    with pytest.raises(OutputExistsError, match=f"'{tmp_path / existing}' exists: pass --overwrite"):
        outputs.check(overwrite=False)
    outputs.check(overwrite=True)
    assert (tmp_path / existing).read_bytes() == b"keep"


def test_the_raster_is_not_checked_when_not_written(tmp_path):
    (tmp_path / "a_prob.tif").write_bytes(b"not mine")
    SceneOutputs(tmp_path / "a.gpkg").check(overwrite=False)


def test_folders_are_refused(tmp_path):
    (tmp_path / "d.gpkg").mkdir()
    with pytest.raises(OutputError, match="is a folder"):
        SceneOutputs(tmp_path / "d.gpkg").check(overwrite=True)
    with pytest.raises(OutputError, match="folder '.*missing' does not exist"):
        SceneOutputs(tmp_path / "missing" / "a.gpkg").check(overwrite=False)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_unwritable_folder_is_refused(tmp_path):
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="is not writable"):
            SceneOutputs(locked / "a.gpkg").check(overwrite=False)
    finally:
        locked.chmod(0o700)


def test_write_writes_every_output_with_the_same_run(tmp_path):
    outputs = SceneOutputs(tmp_path / "a.gpkg", raster=True, to_crs="EPSG:4326")
    outputs.check(overwrite=False)
    run = write(outputs, "sig-1")
    assert read_run_record(outputs.gpkg) == run and run.seconds_write > 0
    assert CRS.from_user_input(pyogrio.read_info(outputs.gpkg, layer="chips")["crs"]) == CRS.from_epsg(4326)
    with rasterio.open(outputs.raster_path) as src:
        assert src.tags()["scenetag_signature"] == "sig-1" and src.tags()["scenetag_run_id"] == run.run_id
        assert src.crs == FRAME.crs and (src.height, src.width) == FRAME.grid_shape
        for band, label_probs in enumerate(TABLE.probs.T, start=1):  # each chip's probability at its cell
            np.testing.assert_allclose(src.read(band)[TABLE.row, TABLE.col], label_probs, rtol=0, atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gpkg", "a_prob.qml", "a_prob.tif"]


def test_a_style_of_the_users_own_is_kept_unless_overwrite(tmp_path):
    outputs = SceneOutputs(tmp_path / "a.gpkg", raster=True)
    (tmp_path / "a_prob.qml").write_text("mine")
    write(outputs)
    assert (tmp_path / "a_prob.qml").read_text() == "mine"
    write(outputs, overwrite=True)
    assert (tmp_path / "a_prob.qml").read_text().startswith("<!DOCTYPE qgis")


def test_up_to_date_needs_the_signature_and_every_output(tmp_path):
    outputs = SceneOutputs(tmp_path / "a.gpkg", raster=True)
    assert not outputs.up_to_date("sig")  # nothing written yet
    write(outputs, "sig")
    assert outputs.up_to_date("sig")
    assert not outputs.up_to_date("other")
    assert SceneOutputs(outputs.gpkg).up_to_date("sig")  # the raster is not asked for
    outputs.raster_path.unlink()
    assert not outputs.up_to_date("sig")  # a removed COG is written again
    assert SceneOutputs(outputs.gpkg).up_to_date("sig")


def test_up_to_date_refuses_a_foreign_file(tmp_path):
    (tmp_path / "a.gpkg").write_text("not a geopackage")
    with pytest.raises(OutputExistsError, match="not a scenetag GeoPackage"):
        SceneOutputs(tmp_path / "a.gpkg").up_to_date("sig")


def test_writing_many_labels_opens_no_file_with_many_layers_per_label(tmp_path, monkeypatch):
    """The write is linear in labels: GDAL's open reads every layer of the file, so no open per label
    may be of the file that holds the layers already written (that was quadratic: 500 labels, 176 s)."""
    import sqlite3

    from scenetag.outputs_schema import geopackage

    n_labels = 60
    spec = ModelSpec.create("m", "a", [f"label {i}" for i in range(n_labels)], 0.5)
    layers_read = []  # per GDAL open: the layers already in the file it opens
    write = geopackage.pyogrio.write_dataframe

    def counting(frame, path, **kw):
        if os.path.exists(path):
            with sqlite3.connect(path) as con:
                layers_read.append(con.execute("SELECT count(*) FROM gpkg_contents").fetchone()[0])
        else:
            layers_read.append(0)
        return write(frame, path, **kw)

    monkeypatch.setattr(geopackage.pyogrio, "write_dataframe", counting)
    table = synthetic_table(2, 5, n_labels, keep=1.0)
    out = tmp_path / "many.gpkg"
    frame = SceneFrame("s", FRAME.transform, FRAME.crs, (2, 5), 64, 64)
    SceneOutputs(out).write(table, spec, frame, fake_run())
    assert sum(layers_read) <= 3 * n_labels, layers_read  # quadratic: about n_labels**2 / 2
    # And the layers are all there, each as GDAL reads it.
    listed = dict(pyogrio.list_layers(out))
    assert [n for n in listed if n.startswith("label_")] == [f"label_label_{i}" for i in range(n_labels)]
    assert all(listed[n] == "MultiPolygon" for n in listed if n.startswith("label_"))
    one = pyogrio.read_dataframe(out, layer="label_label_7")
    assert len(one) <= 1 and one.crs == FRAME.crs
    assert not [p.name for p in tmp_path.iterdir() if p.name != "many.gpkg"]  # no temporaries left


@pytest.mark.parametrize("edge, want", [("shift", {(0, 4), (1, 4), (2, 4), (3, 0), (3, 1), (3, 2), (3, 3), (3, 4)}),
                                        ("pad", set()), ("skip", set())])
def test_shifted_marks_the_chips_moved_back_onto_the_edge(edge, want):
    from scenetag.outputs_schema.geopackage import grid_stride, shifted_chips
    from scenetag.tiler.grid import Grid

    cells = list(Grid(266, 227, 64, 64, edge))
    table = ChipTable.from_rows([(c.row, c.col, c.col_off, c.row_off, c.width, c.height, 1.0) for c in cells],
                                np.zeros((len(cells), 1), np.float32))
    marked = {(int(r), int(c)) for r, c, s in zip(table.row, table.col, shifted_chips(table, 64)) if s}
    assert marked == want
    assert grid_stride(table) == 64 and shifted_chips(table).tolist() == shifted_chips(table, 64).tolist()
    assert not shifted_chips(ChipTable.from_rows([(0, 0, 0, 0, 64, 64, 1.0)], np.zeros((1, 1), np.float32))).any()
