"""Schema version and run provenance in the GeoPackage metadata extension.

Two kinds of rows go into ``gpkg_metadata`` (with ``gpkg_metadata_reference``,
both created and registered in ``gpkg_extensions`` as the GeoPackage 1.2
metadata extension when absent):

* one QGIS layer-metadata document per layer (``md_standard_uri``
  ``http://mrcc.com/qgis.dtd``, ``text/xml``, referenced with
  ``reference_scope='table'``).  That is where QGIS's OGR provider looks for a
  GeoPackage layer's metadata, so it shows under Layer Properties > Metadata
  and > Information: title, abstract (schema version, scene, model, status),
  keywords (schema version, labels), the CRS and one history line per
  provenance field.
* one JSON document for the whole GeoPackage (:data:`PROVENANCE_URI`,
  ``application/json``, ``reference_scope='geopackage'``): the schema version
  and the full provenance row, for programs (GDAL lists it as
  ``GPKG_METADATA_ITEM_n``).

``gpkg_contents.description`` of each layer gets a one-line summary too.
Rerunning :func:`add_metadata` replaces what it wrote before.  The ``runs``
table stays the record programs read back
(:func:`~scenetag.outputs_schema.run_record.read_run_record`); these
documents are its copies for QGIS and GDAL.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from scenetag.model.spec import ModelSpec
from scenetag.outputs_schema.db import connect_read_only
from scenetag.outputs_schema.qml import QML_VERSION, qml_text, xml_safe
from scenetag.outputs_schema.run_record import RunRecord
from scenetag.outputs_schema.schema import CHIPS_LAYER, RUNS_LAYER, SCHEMA_VERSION, OutputSchema

log = logging.getLogger(__name__)

QGIS_METADATA_URI = "http://mrcc.com/qgis.dtd"
PROVENANCE_URI = "urn:scenetag:provenance"
METADATA_EXTENSION = "http://www.geopackage.org/spec120/#extension_metadata"

_DDL = (
    """CREATE TABLE IF NOT EXISTS gpkg_metadata (
        id INTEGER CONSTRAINT m_pk PRIMARY KEY ASC NOT NULL,
        md_scope TEXT NOT NULL DEFAULT 'dataset',
        md_standard_uri TEXT NOT NULL,
        mime_type TEXT NOT NULL DEFAULT 'text/xml',
        metadata TEXT NOT NULL DEFAULT ''
    )""",
    """CREATE TABLE IF NOT EXISTS gpkg_metadata_reference (
        reference_scope TEXT NOT NULL,
        table_name TEXT,
        column_name TEXT,
        row_id_value INTEGER,
        timestamp DATETIME NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
        md_file_id INTEGER NOT NULL,
        md_parent_id INTEGER,
        CONSTRAINT crmr_mfi_fk FOREIGN KEY (md_file_id) REFERENCES gpkg_metadata(id),
        CONSTRAINT crmr_mpi_fk FOREIGN KEY (md_parent_id) REFERENCES gpkg_metadata(id)
    )""",
    """CREATE TABLE IF NOT EXISTS gpkg_extensions (
        table_name TEXT,
        column_name TEXT,
        extension_name TEXT NOT NULL,
        definition TEXT NOT NULL,
        scope TEXT NOT NULL,
        CONSTRAINT ge_tce UNIQUE (table_name, column_name, extension_name)
    )""",
)


def provenance_document(spec: ModelSpec, run: RunRecord) -> dict:
    """The JSON provenance document: schema version, layers, labels and the run record."""
    schema = OutputSchema(spec.labels)
    return {
        "schema_version": SCHEMA_VERSION,
        "layers": list(schema.layers),
        "labels": list(schema.labels),
        "prob_columns": dict(zip(schema.labels, schema.prob_columns)),
        "run": run.to_dict(),
    }


def _summary(run: RunRecord, spec: ModelSpec) -> str:
    return (f"scenetag output schema v{SCHEMA_VERSION}. Scene {run.scene_path or '?'}, model {spec.name} "
            f"({spec.arch}, {spec.n_labels} labels), run {run.run_id or '?'} "
            f"by {run.software or 'scenetag'}, finished {run.finished_at or '?'}, "
            f"status {run.status or '?'}" + (f" ({run.reason})" if run.reason else "") + ".")


def layer_metadata_xml(layer: str, title: str, abstract: str, schema: OutputSchema,
                       run: RunRecord, crs: tuple[str, str] | None) -> str:
    """A QGIS layer-metadata document (what QGIS itself stores in a GeoPackage)."""
    root = ET.Element("qgis", version=QML_VERSION)
    for tag, text in (("identifier", layer), ("parentidentifier", ""), ("language", "en"),
                      ("type", "dataset"), ("title", title), ("abstract", abstract)):
        ET.SubElement(root, tag).text = xml_safe(text)
    kw = ET.SubElement(root, "keywords", vocabulary="scenetag:schema_version")
    ET.SubElement(kw, "keyword").text = str(SCHEMA_VERSION)
    kw = ET.SubElement(root, "keywords", vocabulary="scenetag:labels")
    for label in schema.labels:
        ET.SubElement(kw, "keyword").text = xml_safe(label)
    links = ET.SubElement(root, "links")
    if run.scene_path:
        path = Path(run.scene_path)
        url = path.as_uri() if path.is_absolute() else str(path)
        ET.SubElement(links, "link", name="scene", type="file", url=xml_safe(url),
                      description="the classified scene", format="GeoTIFF", mimeType="image/tiff", size="")
    for name, value in run.to_row().items():  # the text stored in ``runs``
        text = value if isinstance(value, str) else json.dumps(value)
        ET.SubElement(root, "history").text = xml_safe(f"{name}: {text}")
    ET.SubElement(root, "fees").text = ""
    ET.SubElement(root, "encoding").text = ""
    if crs is not None:
        wkt, authid = crs
        crs_el = ET.SubElement(root, "crs")
        srs = ET.SubElement(crs_el, "spatialrefsys")
        ET.SubElement(srs, "wkt").text = wkt
        ET.SubElement(srs, "authid").text = authid
    return qml_text(root)


def _layer_crs(con: sqlite3.Connection) -> dict[str, tuple[str, str]]:
    rows = con.execute(
        "SELECT g.table_name, s.definition, s.organization, s.organization_coordsys_id "
        "FROM gpkg_geometry_columns g JOIN gpkg_spatial_ref_sys s ON g.srs_id = s.srs_id")
    out = {}
    for table, wkt, org, code in rows:
        authid = f"{org.upper()}:{code}" if org and org.upper() != "NONE" and code is not None else ""
        out[table] = (wkt or "", authid)
    return out


def _titles(schema: OutputSchema, scene_id: str) -> dict[str, tuple[str, str]]:
    """Title and one-line description of every layer."""
    out = {CHIPS_LAYER: (f"scenetag chips of {scene_id}",
                         "One polygon per classified chip with its tags and one probability per label.")}
    for label, layer in zip(schema.labels, schema.label_layers):
        out[layer] = (f"scenetag '{label}' footprint of {scene_id}",
                      f"Dissolved footprint of the chips tagged '{label}'.")
    out[RUNS_LAYER] = (f"scenetag runs of {scene_id}", "Provenance of the run that wrote this GeoPackage.")
    return out


def add_metadata(con: sqlite3.Connection, spec: ModelSpec, run: RunRecord) -> None:
    """Write the schema version and ``run`` provenance into the metadata tables of the GeoPackage of ``con``.

    Call it once every layer, ``runs`` included, is written.  Raises ValueError
    when a layer is missing, and :class:`sqlite3.Error` when the GeoPackage
    cannot be read or written (the writer reports it as an
    :class:`~scenetag.errors.OutputError`).
    """
    schema = OutputSchema(spec.labels)
    tables = {r[0] for r in con.execute("SELECT table_name FROM gpkg_contents")}
    missing = [layer for layer in schema.layers if layer not in tables]
    if missing:
        raise ValueError(f"the GeoPackage lacks the layers {missing}: write them before their metadata")
    crs = _layer_crs(con)
    scene_id = Path(run.scene_path or "scene").stem
    summary = _summary(run, spec)
    with con:
        for stmt in _DDL:
            con.execute(stmt)
        for table in ("gpkg_metadata", "gpkg_metadata_reference"):
            con.execute(
                "INSERT OR IGNORE INTO gpkg_extensions (table_name, column_name, extension_name, definition, scope) "
                "VALUES (?, NULL, 'gpkg_metadata', ?, 'read-write')", (table, METADATA_EXTENSION))
        _delete_previous(con, schema)
        doc = json.dumps(provenance_document(spec, run), sort_keys=True, default=str)
        _insert(con, PROVENANCE_URI, "application/json", doc, "geopackage", None)
        for layer, (title, line) in _titles(schema, scene_id).items():
            xml = layer_metadata_xml(layer, title, f"{line}\n\n{summary}", schema, run, crs.get(layer))
            _insert(con, QGIS_METADATA_URI, "text/xml", xml, "table", layer)
            con.execute("UPDATE gpkg_contents SET description=? WHERE table_name=?",
                        (f"{line} scenetag schema v{SCHEMA_VERSION}.", layer))
    log.debug("stored metadata of %d layers", len(schema.layers))


def _insert(con: sqlite3.Connection, uri: str, mime: str, text: str, scope: str, table: str | None) -> None:
    cur = con.execute("INSERT INTO gpkg_metadata (md_scope, md_standard_uri, mime_type, metadata) "
                      "VALUES ('dataset', ?, ?, ?)", (uri, mime, text))
    con.execute("INSERT INTO gpkg_metadata_reference (reference_scope, table_name, md_file_id) VALUES (?, ?, ?)",
                (scope, table, cur.lastrowid))


def _delete_previous(con: sqlite3.Connection, schema: OutputSchema) -> None:
    marks = ",".join("?" * len(schema.layers))
    ids = [r[0] for r in con.execute(
        "SELECT m.id FROM gpkg_metadata m JOIN gpkg_metadata_reference r ON r.md_file_id = m.id "
        f"WHERE (m.md_standard_uri = ? AND r.table_name IN ({marks})) OR m.md_standard_uri = ?",
        (QGIS_METADATA_URI, *schema.layers, PROVENANCE_URI))]
    for md_id in ids:
        con.execute("DELETE FROM gpkg_metadata_reference WHERE md_file_id=?", (md_id,))
        con.execute("DELETE FROM gpkg_metadata WHERE id=?", (md_id,))


def read_metadata(gpkg_path: str | Path) -> list[dict[str, Any]]:
    """Every metadata row with its reference, as dicts (empty without the extension)."""
    con = connect_read_only(gpkg_path)
    con.row_factory = sqlite3.Row
    try:
        if not con.execute("SELECT 1 FROM sqlite_master WHERE name='gpkg_metadata'").fetchone():
            return []
        return [dict(r) for r in con.execute(
            "SELECT m.id, m.md_scope, m.md_standard_uri, m.mime_type, m.metadata, r.reference_scope, r.table_name "
            "FROM gpkg_metadata m LEFT JOIN gpkg_metadata_reference r ON r.md_file_id = m.id ORDER BY m.id")]
    finally:
        con.close()
