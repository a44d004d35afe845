"""The schema and its GeoPackage format: hostile labels become safe, unique layer and column names."""

from __future__ import annotations

import sqlite3

import numpy as np
import pyogrio
import pytest
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.crs import CRS

from scenetag.model.spec import PLANET_LABELS, ModelSpec
from scenetag.outputs_schema.geopackage import write_geopackage
from scenetag.outputs_schema.records import ChipTable
from scenetag.outputs_schema.run_record import read_run_record
from scenetag.outputs_schema.schema import RUN_FIELDS, MAX_NAME, OutputSchema, sanitize_names, tag_names
from tests.qgis_fixtures import fake_run

HOSTILE = ('it\'s "quoted"', "two words", "x; DROP TABLE chips;--", "Ünïcödé", "1st", "two_words",
           "", "   ", "a" * 200, "tags", "geom`etry")


def test_planet_labels_stay_as_they_are():
    assert sanitize_names(PLANET_LABELS) == PLANET_LABELS


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(min_size=0, max_size=80), min_size=1, max_size=30))
def test_sanitized_names_are_safe_and_unique(labels):
    names = sanitize_names(labels)
    assert len(names) == len(labels) == len(set(names))
    for n in names:
        assert n and len(n) <= MAX_NAME and not n[0].isdigit()
        assert all(c.isascii() and (c.isalnum() or c == "_") for c in n)


def test_hostile_labels_survive_a_round_trip(tmp_path):
    # "two words" and "two_words" would be one tag: a spec refuses the pair (tests/test_spec.py).
    labels = tuple(l for l in HOSTILE if l.strip() and l != "two_words")
    spec = ModelSpec.create("hostile", "none", labels, 0.5, chip_size=16)
    schema = OutputSchema(labels)
    n = 4
    probs = np.linspace(0.1, 0.9, n * len(labels)).reshape(n, len(labels)).astype(np.float32)
    rows = [(0, i, 16 * i, 0, 16, 16, 1.0) for i in range(n)]
    out = tmp_path / "h.gpkg"
    run = fake_run(n_chips_total=n, n_chips_classified=n)
    write_geopackage(out, table=ChipTable.from_rows(rows, probs), spec=spec, scene_id="s",
                     transform=Affine(1, 0, 0, 0, -1, 0), crs=CRS.from_epsg(32633), run=run)
    layers = [name for name, _ in pyogrio.list_layers(out) if name != "layer_styles"]
    assert layers == list(schema.layers)
    chips = pyogrio.read_dataframe(out, layer="chips")
    for col, i in zip(schema.prob_columns, range(len(labels))):
        np.testing.assert_allclose(chips[col], probs[:, i], rtol=1e-6)
    words = tag_names(labels)
    assert chips.tags.iloc[-1].split() == [w for w, p in zip(words, probs[-1]) if p >= 0.5]
    want = [[w for w, p in zip(words, row) if p >= 0.5] for row in probs]
    assert [t.split(" ") if t else [] for t in chips.tags] == want  # every chip, single spaces
    assert list(chips.n_tags) == [len(w) for w in want]
    assert list(chips.top_label) == [labels[i] for i in probs.argmax(axis=1)]
    np.testing.assert_array_equal(chips.top_prob, probs.max(axis=1))
    for label, layer in zip(labels, schema.label_layers):
        frame = pyogrio.read_dataframe(out, layer=layer)
        assert list(frame.label) == ([label] if (probs[:, labels.index(label)] >= 0.5).any() else [])
    # The SQL in a label name did nothing: every table is still there.
    with sqlite3.connect(out) as con:
        tables = {r[0] for r in con.execute("select table_name from gpkg_contents")}
    assert {"chips", "runs"} <= tables


def test_an_empty_table_writes_every_layer_empty(tmp_path):
    spec = ModelSpec.create("m", "a", ["water", "road"], 0.5)
    out = tmp_path / "e.gpkg"
    write_geopackage(out, table=ChipTable.empty(2), spec=spec, scene_id="s",
                     transform=Affine(1, 0, 0, 0, -1, 0), crs=CRS.from_epsg(32633), run=fake_run())
    schema = OutputSchema(spec.labels)
    for layer in schema.layers[:-1]:  # all but runs
        frame = pyogrio.read_dataframe(out, layer=layer)
        assert len(frame) == 0, layer
    chips = pyogrio.read_dataframe(out, layer="chips")
    assert list(chips.columns) == [*schema.chip_columns, "geometry"]
    assert len(pyogrio.read_dataframe(out, layer="runs")) == 1


def test_the_runs_row_is_the_record_with_the_write_timed(tmp_path):
    spec = ModelSpec.create("m", "a", ["water", "road"], 0.5)
    out = tmp_path / "r.gpkg"
    given_run = fake_run(seconds_total=2.0, seconds_write=0.0, options={"edge": "shift", "min_valid": 0.5})
    written = write_geopackage(out, table=ChipTable.empty(2), spec=spec, scene_id="s",
                               transform=Affine(1, 0, 0, 0, -1, 0), crs=CRS.from_epsg(32633), run=given_run)
    assert written.seconds_write > 0
    assert written.seconds_total == pytest.approx(2.0 + written.seconds_write)
    assert written.replace(seconds_write=0.0, seconds_total=2.0) == given_run
    assert read_run_record(out) == written
    runs = pyogrio.read_dataframe(out, layer="runs")
    assert list(runs.columns) == [f.name for f in RUN_FIELDS]
    assert runs.options.iloc[0] == '{"edge": "shift", "min_valid": 0.5}'  # JSON text, keys sorted
