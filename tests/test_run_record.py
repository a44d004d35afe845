"""The run record: generated from the ``runs`` declaration, written and read back through a real GeoPackage."""

from __future__ import annotations

import dataclasses
import pickle
import sqlite3

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS

from scenetag.errors import OutputExistsError
from scenetag.model.spec import ModelSpec
from scenetag.outputs_schema.geopackage import write_geopackage
from scenetag.outputs_schema.records import ChipTable
from scenetag.outputs_schema.run_record import RunRecord, read_run_record
from scenetag.outputs_schema.schema import JSON, JSON_LIST, RUN_FIELDS
from tests.qgis_fixtures import fake_run, write_synthetic_gpkg

SPEC = ModelSpec.create("m", "a", ["water", "road"], 0.5)


def write(out, run: RunRecord) -> RunRecord:
    return write_geopackage(out, table=ChipTable.empty(2), spec=SPEC, scene_id="s",
                            transform=Affine(1, 0, 0, 0, -1, 0), crs=CRS.from_epsg(32633), run=run)


def test_fields_are_the_declaration_in_order_with_python_types():
    fields = dataclasses.fields(RunRecord)
    assert [f.name for f in fields] == [f.name for f in RUN_FIELDS]
    types = {"str": str, "int32": int, "float64": float, JSON: dict, JSON_LIST: list}
    assert [f.type for f in fields] == [types[f.dtype] for f in RUN_FIELDS]
    assert [f.metadata["doc"] for f in fields] == [f.doc for f in RUN_FIELDS]
    assert {f.name for f in RUN_FIELDS if f.dtype == JSON} == {"model_spec", "thresholds", "options", "scene_source",
                                                               "config"}


def test_a_record_is_frozen_normalised_and_checked():
    run = fake_run(n_chips_total=np.int64(3), seconds_read=np.float32(0.5), options={"edge": "shift"})
    assert type(run.n_chips_total) is int and type(run.seconds_read) is float
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.status = "failed"
    changed = run.replace(status="failed", reason="bad")
    assert (changed.status, changed.reason, run.status) == ("failed", "bad", "ok")
    assert hash(run) == hash(fake_run(n_chips_total=3, seconds_read=0.5, options={"edge": "shift"}))
    with pytest.raises(TypeError, match="n_chips_total must be an integer"):
        run.replace(n_chips_total=1.5)
    with pytest.raises(TypeError, match="options must be a mapping"):
        run.replace(options='{"edge": "shift"}')
    with pytest.raises(TypeError, match="scene_path must be a str"):
        run.replace(scene_path=None)
    with pytest.raises(TypeError, match="thresholds cannot be stored as JSON"):
        run.replace(thresholds={"water": object()})
    with pytest.raises(TypeError):
        RunRecord(run_id="only this")  # every declared field is required


def test_rows_hold_json_text_and_read_back_to_the_same_record():
    run = fake_run(thresholds={"water": 0.4, "road": 0.6}, options={"stretch": {"low": [1, 2]}, "edge": "pad"})
    row = run.to_row()
    assert list(row) == [f.name for f in RUN_FIELDS]
    assert row["thresholds"] == '{"road": 0.6, "water": 0.4}'  # canonical: keys sorted
    assert RunRecord.from_row(row) == run
    assert pickle.loads(pickle.dumps(run)) == run  # travels between Dask workers
    with pytest.raises(ValueError, match="lacks the fields \\['signature'\\]"):
        RunRecord.from_row({k: v for k, v in row.items() if k != "signature"})


def test_round_trip_through_a_real_geopackage(tmp_path):
    run = fake_run(signature="abc", thresholds={"water": 0.5, "road": 0.5}, n_chips_total=7, seconds_total=1.0)
    written = write(tmp_path / "r.gpkg", run)
    back = read_run_record(tmp_path / "r.gpkg")
    assert back == written and back.signature == "abc" and back.thresholds == {"water": 0.5, "road": 0.5}
    assert back.n_chips_total == 7 and back.seconds_write > 0


@pytest.mark.filterwarnings("ignore:.*(extension|conformant).*:RuntimeWarning")  # decoys end in no .gpkg
@pytest.mark.parametrize("name, decoy", [("a#b.gpkg", "a"), ("what?.gpkg", "what"), ("%23.gpkg", "#.gpkg"),
                                         ("100%.gpkg", None), ("sp ace é.gpkg", None)])
def test_names_special_in_uris_are_read(tmp_path, name, decoy):
    write(tmp_path / name, fake_run(signature=name))
    if decoy:  # the file an unescaped URI would open instead
        write(tmp_path / decoy, fake_run(signature="decoy"))
    assert read_run_record(tmp_path / name).signature == name


def test_a_missing_file_has_no_record_and_is_not_created(tmp_path):
    assert read_run_record(tmp_path / "none.gpkg") is None
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content", [b"not a geopackage" * 10, b""])
def test_a_file_that_is_no_geopackage_is_refused(tmp_path, content):
    foreign = tmp_path / "foreign.gpkg"
    foreign.write_bytes(content)
    with pytest.raises(OutputExistsError, match="'.*foreign.gpkg' exists and is not a scenetag GeoPackage"):
        read_run_record(foreign)
    assert foreign.read_bytes() == content


@pytest.mark.parametrize("ddl, why", [
    ("CREATE TABLE chips (fid INTEGER)", "no 'runs' table"),
    ("CREATE TABLE runs (run_id TEXT, signature TEXT)", "'runs' table lacks the fields \\['schema_version'"),
])
def test_a_geopackage_of_another_program_is_refused(tmp_path, ddl, why):
    other = tmp_path / "other.gpkg"
    con = sqlite3.connect(other)
    con.execute(ddl)
    if "runs" in ddl:
        con.execute("INSERT INTO runs VALUES ('r', 'sig')")
    con.commit()
    con.close()
    with pytest.raises(OutputExistsError, match=why):
        read_run_record(other)


def test_the_last_run_is_read(tmp_path):
    out = write_synthetic_gpkg(tmp_path / "two.gpkg", SPEC)
    con = sqlite3.connect(out)
    row = fake_run(run_id="second", signature="new").to_row()
    con.execute(f"INSERT INTO runs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))
    con.commit()
    con.close()
    assert read_run_record(out).run_id == "second"


def test_warnings_are_a_list_of_strings_and_an_older_file_reads_them_as_empty(tmp_path):
    """runs.warnings (schema 2) round-trips; a schema-1 file without the column is out of date, not foreign."""
    import sqlite3

    run = fake_run(warnings=["no contrast: every band ..."])
    assert run.to_row()["warnings"] == '["no contrast: every band ..."]'
    with pytest.raises(TypeError, match="warnings must be a list of str"):
        run.replace(warnings="no contrast")
    out = tmp_path / "w.gpkg"
    write(out, run)
    assert read_run_record(out).warnings == ["no contrast: every band ..."]
    con = sqlite3.connect(out)
    con.execute('ALTER TABLE runs DROP COLUMN "warnings"')  # as schema 1 wrote it
    con.commit()
    con.close()
    assert read_run_record(out).warnings == []
