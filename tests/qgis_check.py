"""Open a scenetag GeoPackage in a real QGIS, report what QGIS sees as JSON, render a PNG.

Run it with the Python that PyQGIS is built for (Debian: ``/usr/bin/python3``,
QGIS 3.22 from ``python3-qgis``), not the project's virtual environment; it
imports only ``qgis`` and the standard library::

    QT_QPA_PLATFORM=offscreen /usr/bin/python3 tests/qgis_check.py out.gpkg \\
        --scene scene.tif --bands 3,2,1 --png out.png

For every layer QGIS lists in the GeoPackage the report gives: validity, CRS,
feature count, geometry type, the renderer of the default style QGIS applied
on load (type, categories with colours, or the single symbol's colour), the
styles stored in the GeoPackage (and the renderer each one parses to), the map
tip template and a map tip evaluated on the first feature, field aliases, and
the layer metadata (title, abstract, keywords), and the renderer type of each
default style as stored in ``layer_styles`` (``stored_defaults``, read with
sqlite3, to compare with what QGIS applied).  It also gives the GeoPackage
``user_version``, every GDAL message (``gdal_messages``, through ``CPL_LOG``),
and for the PNG its size and how much of it is not background.

Exit status: 0 when the report was written, 2 when ``--strict`` is given and
``problems`` is not empty, 1 on a usage error.  The report goes to stdout (or
``--json``); logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
_CPL_LOG = tempfile.NamedTemporaryFile(prefix="qgis_check_cpl_", suffix=".log", delete=False)
_CPL_LOG.close()
os.environ["CPL_LOG"] = _CPL_LOG.name  # GDAL's warnings go here, so the report can carry them

from qgis.core import (  # noqa: E402  (after the environment is set)
    Qgis,
    QgsApplication,
    QgsContrastEnhancement,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsExpression,
    QgsExpressionContext,
    QgsExpressionContextUtils,
    QgsFeature,
    QgsMapRendererSequentialJob,
    QgsMapSettings,
    QgsMultiBandColorRenderer,
    QgsProject,
    QgsProviderRegistry,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
    QgsWkbTypes,
)
from qgis.PyQt.QtCore import QRectF, QSize, Qt  # noqa: E402
from qgis.PyQt.QtGui import QColor, QFont, QImage, QPainter  # noqa: E402
from qgis.PyQt.QtXml import QDomDocument  # noqa: E402


_APP: QgsApplication | None = None


def log(msg: str) -> None:
    print(f"qgis_check: {msg}", file=sys.stderr)


def color_info(color: QColor) -> dict:
    return {"hex": color.name(), "alpha": color.alpha()}


def renderer_info(renderer) -> dict:
    """Type and classes of a feature renderer."""
    if renderer is None:
        return {"type": None}
    kind = renderer.type()
    info: dict = {"type": kind}
    if kind == "categorizedSymbol":
        info["attribute"] = renderer.classAttribute()
        info["categories"] = [
            {"value": c.value(), "label": c.label(), **color_info(c.symbol().color()),
             "fill_opacity": round(c.symbol().color().alphaF() * c.symbol().opacity(), 3)}
            for c in renderer.categories()
        ]
    elif kind == "graduatedSymbol":
        info["attribute"] = renderer.classAttribute()
        info["ranges"] = [
            {"lower": r.lowerValue(), "upper": r.upperValue(), "label": r.label(), **color_info(r.symbol().color())}
            for r in renderer.ranges()
        ]
    elif kind == "singleSymbol":
        sym = renderer.symbol()
        info["symbol"] = {**color_info(sym.color()), "type": sym.type(),
                          "fill_opacity": round(sym.color().alphaF() * sym.opacity(), 3)}
    return info


def stored_styles(layer: QgsVectorLayer) -> tuple[list[dict], int]:
    """Styles stored for the layer, each with the renderer it parses to, and how many
    entries (its own and the other layers') QGIS's Load Style dialog would list."""
    out = []
    try:
        count, ids, names, descriptions, _err = layer.listStylesInDatabase()
    except Exception as exc:  # noqa: BLE001 - report, don't die
        return [{"error": str(exc)}], 0
    for sid, name, desc in list(zip(ids, names, descriptions))[:count]:
        qml = layer.getStyleFromDatabase(sid)
        if isinstance(qml, tuple):  # PyQGIS returns (qml, error)
            qml = qml[0]
        probe = QgsVectorLayer(layer.source(), f"probe_{name}", "ogr", QgsVectorLayer.LayerOptions(False))
        doc = QDomDocument()
        ok = doc.setContent(qml)[0] if qml else False
        parsed = False
        if ok:
            parsed, _msg = probe.importNamedStyle(doc)
        out.append({"id": sid, "name": name, "description": desc, "parsed": bool(parsed),
                    "renderer": renderer_info(probe.renderer()) if parsed else None})
    return out, len(ids)


def map_tip_sample(layer: QgsVectorLayer) -> str | None:
    """The map tip of the layer's first feature, as QGIS would show it."""
    template = layer.mapTipTemplate()
    if not template:
        return None
    feature = QgsFeature()
    if not layer.getFeatures().nextFeature(feature):
        return None
    context = QgsExpressionContext(QgsExpressionContextUtils.globalProjectLayerScopes(layer))
    context.setFeature(feature)
    return QgsExpression.replaceExpressionText(template, context)


def metadata_info(layer) -> dict:
    md = layer.metadata()
    return {
        "title": md.title(),
        "abstract": md.abstract(),
        "keywords": {k: list(v) for k, v in md.keywords().items()},
        "history": list(md.history()),
        "crs": md.crs().authid() if md.crs().isValid() else None,
    }


def layer_report(path: str, name: str) -> tuple[dict, QgsVectorLayer]:
    layer = QgsVectorLayer(f"{path}|layername={name}", name, "ogr")  # loads the default style
    info: dict = {"valid": layer.isValid()}
    if not layer.isValid():
        return info, layer
    info.update({
        "spatial": layer.isSpatial(),
        "crs": layer.crs().authid() if layer.isSpatial() else None,
        "feature_count": layer.featureCount(),
        "geometry_type": QgsWkbTypes.displayString(layer.wkbType()),
        "fields": [f.name() for f in layer.fields()],
        "aliases": {f.name(): layer.attributeAlias(i) for i, f in enumerate(layer.fields())
                    if layer.attributeAlias(i)},
        "metadata": metadata_info(layer),
    })
    if layer.isSpatial():
        ext = layer.extent()
        info.update({
            "extent": [ext.xMinimum(), ext.yMinimum(), ext.xMaximum(), ext.yMaximum()],
            "renderer": renderer_info(layer.renderer()),
            "opacity": layer.opacity(),
            "map_tip": layer.mapTipTemplate(),
            "map_tip_sample": map_tip_sample(layer),
        })
        info["stored_styles"], info["styles_listed"] = stored_styles(layer)
    return info, layer


def list_layers(path: str) -> list[str]:
    """Layer names as QGIS's OGR provider lists them."""
    details = QgsProviderRegistry.instance().querySublayers(path)
    names = []
    for d in details:
        if d.providerKey() == "ogr" and d.name() not in names:
            names.append(d.name())
    return names


def scene_layer(path: str, bands: list[int] | None) -> QgsRasterLayer:
    """The scene, with ``bands`` as red, green, blue stretched 2-98 %."""
    layer = QgsRasterLayer(path, "scene", "gdal")
    if layer.isValid() and bands and len(bands) == 3:
        provider = layer.dataProvider()
        renderer = QgsMultiBandColorRenderer(provider, *bands)
        setters = (renderer.setRedContrastEnhancement, renderer.setGreenContrastEnhancement,
                   renderer.setBlueContrastEnhancement)
        for band, setter in zip(bands, setters):
            lo, hi = provider.cumulativeCut(band, 0.02, 0.98)
            ce = QgsContrastEnhancement(provider.dataType(band))
            ce.setContrastEnhancementAlgorithm(QgsContrastEnhancement.StretchToMinimumMaximum)
            ce.setMinimumValue(lo)
            ce.setMaximumValue(hi)
            setter(ce)
        layer.setRenderer(renderer)
    return layer


def raster_report(path: str) -> dict:
    """What QGIS sees of the probability raster: bands, their names, nodata, CRS."""
    layer = QgsRasterLayer(path, "probabilities", "gdal")
    if not layer.isValid():
        return {"valid": False}
    dp = layer.dataProvider()
    bands = range(1, layer.bandCount() + 1)
    return {
        "valid": True,
        "crs": layer.crs().authid(),
        "width": layer.width(),
        "height": layer.height(),
        "band_count": layer.bandCount(),
        "band_names": [layer.bandName(b) for b in bands],
        "nodata": [str(dp.sourceNoDataValue(b)) if dp.sourceHasNoDataValue(b) else None for b in bands],
        "renderer": layer.renderer().type() if layer.renderer() else None,
    }


def draw_legend(image: QImage, entries: list[tuple[str, QColor]], title: str) -> None:
    """Colour swatches with their labels, bottom left, on a white box."""
    if not entries:
        return
    p = QPainter(image)
    p.setRenderHint(QPainter.Antialiasing)
    font = QFont("DejaVu Sans", max(9, image.width() // 90))
    p.setFont(font)
    fm = p.fontMetrics()
    line = fm.height() + 4
    width = max(fm.horizontalAdvance(t) for t, _ in entries + [(title, None)]) + line + 24
    height = line * (len(entries) + 1) + 12
    x0, y0 = 10, image.height() - height - 10
    p.fillRect(QRectF(x0, y0, width, height), QColor(255, 255, 255, 215))
    p.setPen(QColor(0, 0, 0))
    p.drawText(QRectF(x0 + 8, y0 + 4, width, line), int(Qt.AlignLeft | Qt.AlignVCenter), title)
    for i, (text, color) in enumerate(entries):
        y = y0 + 6 + line * (i + 1)
        p.fillRect(QRectF(x0 + 8, y + 2, line - 6, line - 6), color)
        p.drawRect(QRectF(x0 + 8, y + 2, line - 6, line - 6))
        p.drawText(QRectF(x0 + line + 10, y, width, line), int(Qt.AlignLeft | Qt.AlignVCenter), text)
    p.end()


def render_image(layers: list, dest: QgsCoordinateReferenceSystem, extent: QgsRectangle, width: int,
                 context=None):
    """``layers`` (top first) rendered in ``dest`` over ``extent``, ``width`` pixels wide, on white:
    the image and the renderer's errors ("layer: message")."""
    height = max(1, round(width * extent.height() / extent.width())) if extent.width() > 0 else width
    settings = QgsMapSettings()
    settings.setDestinationCrs(dest)
    if context is not None:
        settings.setTransformContext(context)
    settings.setLayers(layers)
    settings.setExtent(extent)
    settings.setOutputSize(QSize(width, height))
    settings.setBackgroundColor(QColor(255, 255, 255))
    job = QgsMapRendererSequentialJob(settings)
    job.start()
    job.waitForFinished()
    return job.renderedImage(), [f"{e.layerID}: {e.message}" for e in job.errors()]


def render(png: str, vectors: list[QgsVectorLayer], scene: QgsRasterLayer | None, width: int,
           legend: bool) -> dict:
    """Render ``vectors`` over ``scene`` into ``png``; returns size and blankness statistics."""
    spatial = [v for v in vectors if v.isValid() and v.isSpatial()]
    dest = spatial[0].crs() if spatial else (scene.crs() if scene else QgsCoordinateReferenceSystem("EPSG:4326"))
    extent = QgsRectangle()
    extent.setMinimal()
    if scene is not None and scene.isValid():
        tr = QgsCoordinateTransform(scene.crs(), dest, QgsProject.instance())
        extent.combineExtentWith(tr.transformBoundingBox(scene.extent()))
    for v in spatial:
        if v.featureCount():
            extent.combineExtentWith(v.extent())
    extent.scale(1.03)
    image, errors = render_image(spatial + ([scene] if scene is not None and scene.isValid() else []), dest, extent, width)
    if legend:
        chips = next((v for v in spatial if v.renderer() and v.renderer().type() == "categorizedSymbol"), None)
        entries = []
        if chips is not None:
            present = {str(v) for v in chips.uniqueValues(chips.fields().indexOf(chips.renderer().classAttribute()))}
            for c in chips.renderer().categories():
                if str(c.value()) in present:
                    color = QColor(c.symbol().color())
                    color.setAlpha(max(color.alpha(), 200))  # legible on the white box
                    entries.append((c.label(), color))
        draw_legend(image, entries, "top label")
    image.save(png, "PNG")
    return {"path": png, "width": image.width(), "height": image.height(), **image_stats(image),
            "extent": [extent.xMinimum(), extent.yMinimum(), extent.xMaximum(), extent.yMaximum()],
            "errors": errors}


def image_stats(image: QImage, step: int = 3) -> dict:
    """Share of (sampled) pixels that are not the white background, and distinct colours."""
    seen = set()
    non_bg = total = 0
    for y in range(0, image.height(), step):
        for x in range(0, image.width(), step):
            rgb = image.pixel(x, y) & 0xFFFFFF
            seen.add(rgb)
            total += 1
            non_bg += rgb != 0xFFFFFF
    return {"non_background_fraction": round(non_bg / max(1, total), 4), "distinct_colors": len(seen)}


def tree_info(node) -> dict:
    """A layer-tree node as QGIS holds it: group or layer, name, checked, expanded, children."""
    from qgis.core import QgsLayerTreeGroup

    if isinstance(node, QgsLayerTreeGroup):
        return {"group": node.name(), "checked": node.itemVisibilityChecked(), "expanded": node.isExpanded(),
                "children": [tree_info(c) for c in node.children()]}
    return {"layer": node.name(), "checked": node.itemVisibilityChecked(), "expanded": node.isExpanded()}


def project_report(uri: str) -> tuple[dict, QgsProject]:
    """What QGIS makes of the project at ``uri``: its layers (valid, provider, source, renderer), tree, CRS."""
    project = QgsProject.instance()
    ok = project.read(uri)
    info: dict = {"uri": uri, "read": ok, "crs": project.crs().authid(), "title": project.title()}
    info["layers"] = {}
    for layer in project.mapLayers().values():
        entry = {"valid": layer.isValid(), "provider": layer.providerType(), "source": layer.source(),
                 "crs": layer.crs().authid(), "opacity": layer.opacity()}
        if isinstance(layer, QgsVectorLayer):
            entry["renderer"] = renderer_info(layer.renderer())
            entry["feature_count"] = layer.featureCount()
            entry["map_tip"] = layer.mapTipTemplate()
            if layer.renderer() is not None:
                entry["order_by"] = [f"{c.expression().expression()} {'ASC' if c.ascending() else 'DESC'}"
                                     for c in layer.renderer().orderBy().list()] \
                    if layer.renderer().orderByEnabled() else []
        elif isinstance(layer, QgsRasterLayer):
            r = layer.renderer()
            entry["renderer"] = {"type": r.type() if r else None}
            if r is not None and r.type() == "multibandcolor":
                entry["renderer"]["bands"] = [r.redBand(), r.greenBand(), r.blueBand()]
                ce = r.redContrastEnhancement()
                entry["renderer"]["red_range"] = [ce.minimumValue(), ce.maximumValue()] if ce else None
        info["layers"][layer.name()] = entry
    info["tree"] = tree_info(project.layerTreeRoot())
    return info, project


def render_project(png: str, project: QgsProject, width: int, only: list[str] | None) -> dict:
    """Render the project's checked layers in their tree order (or only the layers named ``only``),
    over the extent of its scene and chips, as :func:`render` frames a map."""
    checked = project.layerTreeRoot().checkedLayers()
    layers = [lyr for lyr in checked if only is None or lyr.name() in only]
    dest = project.crs()
    extent = QgsRectangle()
    extent.setMinimal()
    for lyr in checked:  # the frame is the whole map's, whatever is drawn
        if lyr.name() == "scene" or (isinstance(lyr, QgsVectorLayer) and lyr.featureCount()):
            tr = QgsCoordinateTransform(lyr.crs(), dest, project)
            extent.combineExtentWith(tr.transformBoundingBox(lyr.extent()))
    extent.scale(1.03)
    image, errors = render_image(layers, dest, extent, width, project.transformContext())
    image.save(png, "PNG")
    return {"path": png, "width": image.width(), "height": image.height(), "layers": [lyr.name() for lyr in layers],
            "extent": [extent.xMinimum(), extent.yMinimum(), extent.xMaximum(), extent.yMaximum()],
            **image_stats(image), "errors": errors}


def gpkg_info(path: str) -> dict:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {"application_id": con.execute("PRAGMA application_id").fetchone()[0],
                "user_version": con.execute("PRAGMA user_version").fetchone()[0]}
    finally:
        con.close()


def stored_default_renderers(path: str) -> dict[str, str]:
    """Layer -> renderer type of its default style in ``layer_styles``, read with sqlite3."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        if not con.execute("SELECT 1 FROM sqlite_master WHERE name='layer_styles'").fetchone():
            return {}
        rows = con.execute("SELECT f_table_name, styleQML FROM layer_styles WHERE useAsDefault").fetchall()
    finally:
        con.close()
    out = {}
    for table, qml in rows:
        try:
            renderer = ET.fromstring(qml.split("\n", 1)[1] if qml.startswith("<!DOCTYPE") else qml).find(
                "renderer-v2")
        except ET.ParseError:
            out[table] = "unparsable"
            continue
        out[table] = renderer.get("type") if renderer is not None else "none"
    return out


def problems_of(report: dict) -> list[str]:
    """Self-evident failures, for ``--strict``."""
    out = []
    for name, info in report["layers"].items():
        if not info.get("valid"):
            out.append(f"layer {name} is not valid")
        stored = report["stored_defaults"].get(name)
        applied = (info.get("renderer") or {}).get("type")
        if stored and stored != applied:
            out.append(f"layer {name}: default style is {stored} in the GeoPackage, QGIS applied {applied}")
    if "raster" in report and not report["raster"].get("valid"):
        out.append("the probability raster is not valid")
    out += [f"GDAL: {m}" for m in report["gdal_messages"] if "partially supported" in m]
    png = report.get("png")
    if png and png["non_background_fraction"] < 0.05:
        out.append("the PNG is (nearly) blank")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("gpkg")
    ap.add_argument("--scene", help="GeoTIFF to render under the layers")
    ap.add_argument("--bands", help="scene bands as red,green,blue, e.g. 3,2,1")
    ap.add_argument("--png", help="write the rendering here")
    ap.add_argument("--layers", default="chips",
                    help="comma-separated layers to render, top first; 'all' for every spatial layer "
                         "(default: chips)")
    ap.add_argument("--width", type=int, default=900)
    ap.add_argument("--legend", action="store_true", help="draw a legend of the top labels")
    ap.add_argument("--raster", help="probability GeoTIFF (--raster output) to open too")
    ap.add_argument("--project", help="also open the project of this name stored in the GeoPackage; with "
                                      "--png, render it instead of the layers")
    ap.add_argument("--project-layers", help="comma-separated layers of the project to render (default: "
                                             "those checked in its layer tree)")
    ap.add_argument("--json", help="write the report here instead of stdout")
    ap.add_argument("--strict", action="store_true", help="exit 2 when the report lists problems")
    args = ap.parse_args(argv)
    if not Path(args.gpkg).is_file():
        log(f"{args.gpkg} does not exist")
        return 1

    global _APP
    _APP = QgsApplication([], False)
    _APP.initQgis()
    messages: list[str] = []
    QgsApplication.messageLog().messageReceived.connect(lambda m, tag, level: messages.append(f"{tag}: {m}"))
    path = str(Path(args.gpkg).resolve())
    report: dict = {"qgis_version": Qgis.QGIS_VERSION, "gpkg": {"path": path, **gpkg_info(path)}}
    report["stored_defaults"] = stored_default_renderers(path)
    names = list_layers(path)
    report["layer_names"] = names
    report["layers"] = {}
    layers: dict[str, QgsVectorLayer] = {}
    for name in names:
        report["layers"][name], layers[name] = layer_report(path, name)
    if args.raster:
        report["raster"] = raster_report(args.raster)
    if args.project:
        report["project"], project = project_report(f"geopackage:{path}?projectName={args.project}")
        if args.png:
            only = None if args.project_layers is None else [n for n in args.project_layers.split(",") if n]
            report["png"] = render_project(args.png, project, args.width, only)
    elif args.png:
        wanted = ([n for n in names if report["layers"][n].get("spatial")] if args.layers == "all"
                  else [n.strip() for n in args.layers.split(",") if n.strip()])
        vectors = [layers[n] for n in wanted if n in layers]
        scene = None
        if args.scene:
            bands = [int(b) for b in args.bands.split(",")] if args.bands else None
            scene = scene_layer(args.scene, bands)
            report["scene"] = {"path": args.scene, "valid": scene.isValid(), "crs": scene.crs().authid(),
                               "bands": bands}
        report["png"] = render(args.png, vectors, scene, args.width, args.legend)
    _APP.processEvents()
    report["qgis_messages"] = messages
    lines = [ln for ln in Path(_CPL_LOG.name).read_text(errors="replace").splitlines() if ln]
    report["gdal_messages"] = list(dict.fromkeys(lines))  # each once, in order
    report["problems"] = problems_of(report)
    text = json.dumps(report, indent=1, default=str)
    if args.json:
        Path(args.json).write_text(text)
    else:
        print(text)
    return 2 if args.strict and report["problems"] else 0


if __name__ == "__main__":
    try:
        status = main()
    finally:
        os.unlink(_CPL_LOG.name)
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip exitQgis() and the interpreter's teardown: once a map has been rendered,
    # PyQGIS objects destroyed in the wrong order crash it (segmentation fault).
    os._exit(status)
