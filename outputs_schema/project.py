"""A QGIS project stored inside the GeoPackage: open the file's project and the map is there.

QGIS keeps projects in a GeoPackage in a table ``qgis_projects`` (QGIS's
``QgsGeoPackageProjectStorage``: ``name TEXT PRIMARY KEY, metadata BLOB,
content BLOB``), one row per project: ``metadata`` is a small JSON document
(``last_modified_time``, ``last_modified_user``) and ``content`` the zipped
project (``.qgz`` bytes) as hexadecimal text.  QGIS opens it from Project >
Open From > GeoPackage, from the Browser (the project is listed under the
GeoPackage), or as ``geopackage:PATH?projectName=NAME``.  The table is not
registered in ``gpkg_contents``, as QGIS does not register it either, so GDAL
lists no extra layer.

The project (:func:`project_qgs`, QGIS 3.22 syntax, a few elements kept
small) holds, top to bottom:

* ``chips`` with its default style (the one in ``layer_styles``);
* a group ``labels``, collapsed and hidden, with each ``label_<name>`` layer
  in its style, a click away;
* the scene as the background, referenced by its path (relative to the
  GeoPackage where it can be, so the pair can be moved together), in the
  bands the model read and with the stretch it was given (``runs.options``:
  ``bands_used``, ``stretch``), so the map shows what the model saw.

It is written by the job itself into the GeoPackage being written, before the
rename that makes the output appear, so it is there exactly when the rest is;
no QGIS is needed to write it.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import xml.etree.ElementTree as ET
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from rasterio.crs import CRS

from scenetag.model.spec import ModelSpec
from scenetag.outputs_schema.qml import QML_VERSION, qml_text, xml_safe
from scenetag.outputs_schema.run_record import RunRecord
from scenetag.outputs_schema.schema import CHIPS_LAYER, OutputSchema
from scenetag.outputs_schema.styles import STYLE_TABLE

PROJECT_TABLE = "qgis_projects"
#: The table as QGIS's GeoPackage project storage creates it.
PROJECT_DDL = f"CREATE TABLE {PROJECT_TABLE}(name TEXT PRIMARY KEY, metadata BLOB, content BLOB)"
#: Name of the group of label layers in the layer tree.
LABELS_GROUP = "labels"
SCENE_LAYER = "scene"


def project_uri(gpkg: str | Path, name: str) -> str:
    """The URI QGIS opens the project ``name`` of the GeoPackage ``gpkg`` by (``QgsProject.read``)."""
    return f"geopackage:{Path(gpkg).resolve()}?projectName={name}"


def _srs(parent: ET.Element, crs: CRS) -> None:
    srs = ET.SubElement(parent, "spatialrefsys")
    ET.SubElement(srs, "wkt").text = crs.to_wkt()
    epsg = crs.to_epsg()
    if epsg:
        ET.SubElement(srs, "authid").text = f"EPSG:{epsg}"


def _source(path: str, gpkg: Path) -> str:
    """How the project names ``path``: relative to the GeoPackage's folder (QGIS's ``./``, ``../``) when
    both are local files on one drive, else as given (a URL, a GDAL ``/vsi`` path)."""
    if "://" in path or path.startswith("/vsi") or not os.path.isabs(path):
        return path
    try:
        rel = os.path.relpath(path, gpkg.resolve().parent)
    except ValueError:  # another drive (Windows)
        return path
    return rel if rel.startswith("../") or rel.startswith("..\\") else "./" + rel


def _vector_layer(layers: ET.Element, layer_id: str, name: str, source: str, geometry: str, crs: CRS,
                  style_qml: str | None) -> None:
    ml = ET.SubElement(layers, "maplayer", type="vector", geometry="Polygon", wkbType=geometry,
                       autoRefreshEnabled="0", refreshOnNotifyEnabled="0", readOnly="0", hasScaleBasedVisibilityFlag="0")
    ET.SubElement(ml, "id").text = layer_id
    ET.SubElement(ml, "datasource").text = source
    ET.SubElement(ml, "layername").text = xml_safe(name)
    _srs(ET.SubElement(ml, "srs"), crs)
    ET.SubElement(ml, "provider", encoding="UTF-8").text = "ogr"
    if style_qml:  # the style's elements (renderer, opacity, map tip, aliases) are a layer's own
        style = ET.fromstring(style_qml.split("\n", 1)[1] if style_qml.startswith("<!DOCTYPE") else style_qml)
        ml.extend(list(style))


def _contrast(parent: ET.Element, tag: str, low: float | None, high: float | None) -> None:
    ce = ET.SubElement(parent, tag)
    if low is None or high is None:
        ET.SubElement(ce, "algorithm").text = "NoEnhancement"
        return
    ET.SubElement(ce, "minValue").text = repr(float(low))
    ET.SubElement(ce, "maxValue").text = repr(float(high))
    ET.SubElement(ce, "algorithm").text = "StretchToMinimumMaximum"


def _scene_layer(layers: ET.Element, source: str, crs: CRS, bands: Sequence[int],
                 stretch: dict | None) -> None:
    """The scene as QGIS draws it: ``bands`` as red, green, blue (or grey), stretched as the model read it."""
    ml = ET.SubElement(layers, "maplayer", type="raster", autoRefreshEnabled="0", refreshOnNotifyEnabled="0",
                       hasScaleBasedVisibilityFlag="0")
    ET.SubElement(ml, "id").text = "scenetag_scene"
    ET.SubElement(ml, "datasource").text = source
    ET.SubElement(ml, "layername").text = SCENE_LAYER
    _srs(ET.SubElement(ml, "srs"), crs)
    ET.SubElement(ml, "provider").text = "gdal"
    pipe = ET.SubElement(ml, "pipe")
    lows = list((stretch or {}).get("low") or [None] * len(bands))
    highs = list((stretch or {}).get("high") or [None] * len(bands))
    if len(bands) >= 3:
        r = ET.SubElement(pipe, "rasterrenderer", type="multibandcolor", opacity="1", alphaBand="-1",
                          redBand=str(bands[0]), greenBand=str(bands[1]), blueBand=str(bands[2]))
        ET.SubElement(r, "rasterTransparency")
        _min_max_origin(r)
        for i, colour in enumerate(("red", "green", "blue")):
            _contrast(r, f"{colour}ContrastEnhancement", lows[i], highs[i])
    else:
        r = ET.SubElement(pipe, "rasterrenderer", type="singlebandgray", opacity="1", alphaBand="-1",
                          grayBand=str(bands[0] if bands else 1), gradient="BlackToWhite")
        ET.SubElement(r, "rasterTransparency")
        _min_max_origin(r)
        _contrast(r, "contrastEnhancement", lows[0] if lows else None, highs[0] if highs else None)
    ET.SubElement(pipe, "brightnesscontrast", brightness="0", contrast="0", gamma="1")
    ET.SubElement(pipe, "huesaturation", saturation="0", grayscaleMode="0", colorizeOn="0", colorizeRed="255",
                  colorizeGreen="128", colorizeBlue="128", colorizeStrength="100", invertColors="0")
    ET.SubElement(pipe, "rasterresampler", maxOversampling="2")
    ET.SubElement(ml, "blendMode").text = "0"


def _min_max_origin(renderer: ET.Element) -> None:
    # "None": the stored values are the stretch, not recomputed on load.
    mmo = ET.SubElement(renderer, "minMaxOrigin")
    for tag, text in (("limits", "None"), ("extent", "WholeRaster"), ("statAccuracy", "Estimated"),
                      ("cumulativeCutLower", "0.02"), ("cumulativeCutUpper", "0.98"), ("stdDevFactor", "2")):
        ET.SubElement(mmo, tag).text = text


def _tree_layer(parent: ET.Element, layer_id: str, name: str, source: str, provider: str,
                checked: bool) -> None:
    ET.SubElement(parent, "layer-tree-layer", id=layer_id, name=xml_safe(name), source=source,
                  providerKey=provider, checked="Qt::Checked" if checked else "Qt::Unchecked", expanded="0")


def project_qgs(gpkg: Path, spec: ModelSpec, run: RunRecord, scene_crs: CRS, vector_crs: CRS,
                styles: dict[str, str], extent: tuple[float, float, float, float] | None) -> str:
    """The ``.qgs`` document of the project (see the module); ``styles`` maps layer -> default QML,
    ``extent`` (xmin, ymin, xmax, ymax in ``vector_crs``) is the view it opens on."""
    schema = OutputSchema(spec.labels)
    here = f"./{gpkg.name}"
    title = f"scenetag: {Path(run.scene_path).stem if run.scene_path else gpkg.stem}"
    root = ET.Element("qgis", projectname=xml_safe(title), version=QML_VERSION)
    ET.SubElement(root, "homePath", path="")
    ET.SubElement(root, "title").text = xml_safe(title)
    _srs(ET.SubElement(root, "projectCrs"), vector_crs)

    ids = {CHIPS_LAYER: "scenetag_chips", **{layer: f"scenetag_{layer}" for layer in schema.label_layers}}
    sources = {layer: f"{here}|layername={layer}" for layer in ids}
    scene = _source(run.scene_path, gpkg) if run.scene_path else ""
    tree = ET.SubElement(root, "layer-tree-group")
    ET.SubElement(tree, "customproperties")
    _tree_layer(tree, ids[CHIPS_LAYER], CHIPS_LAYER, sources[CHIPS_LAYER], "ogr", True)
    group = ET.SubElement(tree, "layer-tree-group", name=LABELS_GROUP, checked="Qt::Unchecked", expanded="0")
    ET.SubElement(group, "customproperties")
    for layer in schema.label_layers:
        _tree_layer(group, ids[layer], layer, sources[layer], "ogr", True)
    if scene:
        _tree_layer(tree, "scenetag_scene", SCENE_LAYER, scene, "gdal", True)

    layers = ET.SubElement(root, "projectlayers")
    _vector_layer(layers, ids[CHIPS_LAYER], CHIPS_LAYER, sources[CHIPS_LAYER], "Polygon", vector_crs,
                  styles.get(CHIPS_LAYER))
    for layer in schema.label_layers:
        _vector_layer(layers, ids[layer], layer, sources[layer], "MultiPolygon", vector_crs, styles.get(layer))
    if scene:
        _scene_layer(layers, scene, scene_crs, list(run.options.get("bands_used") or []),
                     run.options.get("stretch"))

    if extent is not None:
        canvas = ET.SubElement(root, "mapcanvas", name="theMapCanvas", annotationsVisible="1")
        ET.SubElement(canvas, "units").text = "degrees" if vector_crs.is_geographic else "meters"
        ext = ET.SubElement(canvas, "extent")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), extent):
            ET.SubElement(ext, tag).text = repr(float(value))
        ET.SubElement(canvas, "rotation").text = "0"
        _srs(ET.SubElement(canvas, "destinationsrs"), vector_crs)
    props = ET.SubElement(root, "properties")
    paths = ET.SubElement(props, "Paths")
    ET.SubElement(paths, "Absolute", type="bool").text = "false"
    # QGIS reads ``projectCrs`` only with this set (else the project has no CRS).
    ET.SubElement(ET.SubElement(props, "SpatialRefSys"), "ProjectionsEnabled", type="int").text = "1"
    return qml_text(root)


def qgz_bytes(qgs: str, name: str) -> bytes:
    """The project zipped as QGIS's ``.qgz``: one ``<name>.qgs`` inside."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{name}.qgs", qgs.encode("utf-8"))
    return buf.getvalue()


def project_name(run: RunRecord, gpkg: Path) -> str:
    """The project's name in the table: the scene's stem (the GeoPackage's where there is no scene)."""
    return Path(run.scene_path).stem if run.scene_path else gpkg.stem


def add_project(con: sqlite3.Connection, gpkg: str | Path, spec: ModelSpec, run: RunRecord, scene_crs: CRS,
                vector_crs: CRS, extent: tuple[float, float, float, float] | None) -> str:
    """Store the project in the GeoPackage of ``con``, which will be at ``gpkg``; returns its name.

    The layers' styles are the defaults already in ``layer_styles`` (write them
    first).  Replaces a project of the same name.
    """
    gpkg = Path(gpkg)
    styles = dict(con.execute(f'SELECT f_table_name, styleQML FROM "{STYLE_TABLE}" WHERE useAsDefault'))
    name = project_name(run, gpkg)
    qgs = project_qgs(gpkg, spec, run, scene_crs, vector_crs, styles, extent)
    metadata = json.dumps({"last_modified_time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
                           "last_modified_user": "scenetag"})
    with con:
        if not con.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (PROJECT_TABLE,)).fetchone():
            con.execute(PROJECT_DDL)
        con.execute(f"INSERT OR REPLACE INTO {PROJECT_TABLE} (name, metadata, content) VALUES (?, ?, ?)",
                    (name, metadata, qgz_bytes(qgs, name).hex()))
    return name


def read_project(gpkg: str | Path, name: str | None = None) -> tuple[str, str]:
    """``(name, .qgs text)`` of the project ``name`` (default: the only one) stored in ``gpkg``."""
    from scenetag.outputs_schema.db import connect_read_only

    con = connect_read_only(gpkg)
    try:
        rows = con.execute(f"SELECT name, content FROM {PROJECT_TABLE}").fetchall()
    finally:
        con.close()
    found = [r for r in rows if name is None or r[0] == name]
    if len(found) != 1:
        raise LookupError(f"{gpkg}: projects {[r[0] for r in rows]}, wanted {name or 'exactly one'}")
    (pname, content), = found
    with zipfile.ZipFile(io.BytesIO(bytes.fromhex(content))) as zf:
        [qgs] = [n for n in zf.namelist() if n.endswith(".qgs")]
        return pname, zf.read(qgs).decode("utf-8")
