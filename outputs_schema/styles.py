"""QGIS styles stored in the GeoPackage, in the ``layer_styles`` table QGIS reads.

QGIS (its OGR provider) looks for a table ``layer_styles`` in the GeoPackage and
applies, as a layer's default style, the row whose ``f_table_name`` and
``f_geometry_column`` match the layer and whose ``useAsDefault`` is set; the
other rows of that layer are listed under Layer Properties > Style > Load
Style > From Database, to switch among them.  The table has the definition
QGIS itself creates (see :data:`LAYER_STYLES_DDL`) and is registered in
``gpkg_contents`` as an ``attributes`` table, so the file stays a valid
GeoPackage and GDAL lists it like any other table.

Styles written (QML, QGIS 3.22 syntax, which later releases read too):

``chips``
    Default: categorised by ``top_label``, one category per label in the label's
    colour (:mod:`outputs_schema.colors`), the layer semi-transparent and
    each place drawn once (shifted edge chips beneath, :func:`_chips_drawn_once`).  Besides, one
    non-default style per label, ``prob_<label>``, graduated by that label's
    probability column with a class break at the label's threshold.  Map tips
    show the tags and every label's probability; the probability columns get
    the label names as aliases.
``label_<name>``
    Default: a single semi-transparent fill in the label's colour.  Map tips
    show the label, chip count, mean probability and area.

Each row gets an ``update_time`` in a second of its own (see
:func:`_distinct_seconds`).  :func:`probability_raster_qml` is the heat-map
style that :mod:`outputs_schema.raster` writes beside the probability raster.

Label names go into XML through :mod:`xml.etree`, and into SQL as bound
parameters, so no label can break the QML or the table.
"""

from __future__ import annotations

import html
import logging
import sqlite3
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Mapping, Sequence

from scenetag.model.spec import ModelSpec
from scenetag.outputs_schema.colors import Color, label_color, label_colors
from scenetag.outputs_schema.db import connect_read_only
from scenetag.outputs_schema.qml import QML_VERSION, add_props, fill_symbol, qml_text, xml_safe
from scenetag.outputs_schema.schema import CHIPS_LAYER, OutputSchema, sanitize_names

log = logging.getLogger(__name__)

STYLE_TABLE = "layer_styles"

#: The table as QGIS's OGR provider creates it (through GDAL) in a GeoPackage.
LAYER_STYLES_DDL = f"""CREATE TABLE "{STYLE_TABLE}" (
    "id" INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    "f_table_catalog" TEXT(256),
    "f_table_schema" TEXT(256),
    "f_table_name" TEXT(256),
    "f_geometry_column" TEXT(256),
    "styleName" TEXT(30),
    "styleQML" TEXT,
    "styleSLD" TEXT,
    "useAsDefault" BOOLEAN,
    "description" TEXT,
    "owner" TEXT(30),
    "ui" TEXT(30),
    "update_time" DATETIME DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
)"""

#: Widest style name the table declares (GDAL warns when reading longer ones).
MAX_STYLE_NAME = 30

#: Opacity of the ``chips`` layer (its fills are opaque: see :func:`_chips_drawn_once`) and fill
#: opacity of label footprints.
CHIP_FILL_ALPHA = 0.45
LABEL_FILL_ALPHA = 0.40
#: Fields the chips are drawn in order of, each descending: the first drawn lies beneath.
CHIPS_ORDER_BY = ("shifted", "row", "col")
#: Opacity of the ``chips`` layer under a graduated ``prob_<label>`` style.
CHIP_GRADUATED_OPACITY = 0.7
#: Name of the default ``chips`` style and prefix of the per-label graduated styles.
CHIPS_DEFAULT_STYLE = "top_label"
#: Name of the alternative ``chips`` style by the ``weather`` field.
CHIPS_WEATHER_STYLE = "weather"
PROB_STYLE_PREFIX = "prob_"

_POLYGON = "2"  # QgsWkbTypes::PolygonGeometry


@dataclass(frozen=True)
class LayerStyle:
    """One row of ``layer_styles``."""

    layer: str
    geometry_column: str
    name: str
    qml: str
    default: bool
    description: str


# -- QML documents -------------------------------------------------------------
def _qgis_root() -> ET.Element:
    return ET.Element("qgis", version=QML_VERSION,
                      styleCategories="Symbology|Fields|MapTips|Rendering|AttributeTable")


def _chips_drawn_once(renderer: ET.Element) -> None:
    """Draw ``chips`` so that no place is painted twice: shifted chips beneath, fills opaque.

    Under ``--edge shift`` the last row and column of chips are moved back to
    end on the scene's edge, so they overlap their neighbours (footprints are
    the windows read).  Semi-transparent fills would paint each overlap twice:
    a darker stripe along the edges.  Instead the fills are opaque and the
    layer as a whole is drawn at :data:`CHIP_FILL_ALPHA` (QGIS composes a layer
    with opacity below 1 off screen, then blends it once), and the features
    are ordered by ``shifted`` (then row and column, :data:`CHIPS_ORDER_BY`)
    so that a shifted chip lies beneath its neighbours and shows only where
    it adds to them.
    """
    renderer.set("enableorderby", "1")
    orderby = ET.SubElement(renderer, "orderby")
    # Among shifted chips, later rows and columns beneath: a chip shifted along both axes (the
    # corner) lies under those shifted along one, as the probability raster's cells lie.
    for field in CHIPS_ORDER_BY:
        ET.SubElement(orderby, "orderByClause", asc="0", nullsFirst="0").text = f'"{field}"'


def _finish(root: ET.Element, *, map_tip: str, preview: str,
            aliases: Mapping[str, str] | None = None, opacity: float = 1.0) -> str:
    if aliases:
        al = ET.SubElement(root, "aliases")
        for i, (field, alias) in enumerate(aliases.items()):
            ET.SubElement(al, "alias", field=field, index=str(i), name=alias)
    ET.SubElement(root, "blendMode").text = "0"
    ET.SubElement(root, "featureBlendMode").text = "0"
    ET.SubElement(root, "layerOpacity").text = f"{opacity:g}"
    ET.SubElement(root, "previewExpression").text = preview
    ET.SubElement(root, "mapTip").text = map_tip
    ET.SubElement(root, "layerGeometryType").text = _POLYGON
    return qml_text(root)


def _chips_map_tip(schema: OutputSchema) -> str:
    """HTML map tip of a chip: top label, tags and a table of every probability."""
    rows = "\n".join(
        f'<tr><td>{html.escape(xml_safe(label))}</td><td align="right">[% format_number("{col}", 3) %]</td></tr>'
        for label, col in zip(schema.labels, schema.prob_columns)
    )
    return (
        '<b>[% "top_label" %]</b> ([% format_number("top_prob", 3) %])<br/>\n'
        'tags: [% "tags" %]<br/>\n'
        'chip row [% "row" %], col [% "col" %]; valid [% format_number("valid_fraction" * 100, 0) %]%\n'
        f"<table>\n{rows}\n</table>"
    )


def _prob_aliases(schema: OutputSchema) -> dict[str, str]:
    return {col: f"p({xml_safe(label)})" for label, col in zip(schema.labels, schema.prob_columns)}


def _chips_by_label_qml(schema: OutputSchema, attr: str, labels: Sequence[str]) -> str:
    """``chips`` categorised by the label in field ``attr``: one category per label of ``labels``,
    in the colour that label has among all of the schema's labels."""
    colors = dict(zip(schema.labels, label_colors(schema.labels)))
    root = _qgis_root()
    r = ET.SubElement(root, "renderer-v2", type="categorizedSymbol", attr=attr,
                      symbollevels="0", forceraster="0", enableorderby="0")
    cats = ET.SubElement(r, "categories")
    syms = ET.SubElement(r, "symbols")
    for i, label in enumerate(labels):
        c = colors[label]
        ET.SubElement(cats, "category", render="true", symbol=str(i), value=xml_safe(label),
                      label=xml_safe(label))
        syms.append(fill_symbol(str(i), c.qgis(1.0), c.darker().qgis(1.0), 0.2))
    src = ET.SubElement(r, "source-symbol")
    src.append(fill_symbol("0", Color(200, 200, 200).qgis(1.0), "35,35,35,255", 0.2))
    ET.SubElement(r, "rotation")
    ET.SubElement(r, "sizescale")
    _chips_drawn_once(r)
    return _finish(root, map_tip=_chips_map_tip(schema), preview=f'"{attr}"',
                   aliases=_prob_aliases(schema), opacity=CHIP_FILL_ALPHA)


def chips_categorized_qml(schema: OutputSchema) -> str:
    """``chips`` categorised by ``top_label``: one category per label, in its colour."""
    return _chips_by_label_qml(schema, "top_label", schema.labels)


def chips_weather_qml(schema: OutputSchema, weather: Sequence[str]) -> str:
    """``chips`` categorised by ``weather``: one category per weather label, in its colour (an alternative style)."""
    return _chips_by_label_qml(schema, "weather", weather)


def weather_style(spec: ModelSpec, geometry_column: str) -> list[LayerStyle]:
    """The stored alternative ``chips`` style by weather, where the spec has a weather group ([] otherwise)."""
    if not spec.weather_labels:
        return []
    return [LayerStyle(CHIPS_LAYER, geometry_column, CHIPS_WEATHER_STYLE,
                       chips_weather_qml(OutputSchema(spec.labels), spec.weather_labels), False,
                       "scenetag: chips categorised by weather")]


def probability_breaks(threshold: float) -> tuple[float, ...]:
    """Class breaks of a probability: halves below and above the label's threshold."""
    t = float(threshold)
    return (0.0, t / 2, t, t + (1 - t) / 2, 1.0)


def chips_graduated_qml(schema: OutputSchema, label_index: int, threshold: float) -> str:
    """``chips`` graduated by one label's probability, classes split at its threshold.

    The lowest class (below half the threshold) is outlined only, so the scene
    shows; the others are filled, opaque, from pale to the label's colour, and
    the layer is drawn at :data:`CHIP_GRADUATED_OPACITY` (overlaps once, as in
    :func:`_chips_drawn_once`).
    """
    col = schema.prob_columns[label_index]
    c = label_colors(schema.labels)[label_index]
    breaks = probability_breaks(threshold)
    alphas = (0.0, 1.0, 1.0, 1.0)
    root = _qgis_root()
    r = ET.SubElement(root, "renderer-v2", type="graduatedSymbol", attr=col,
                      graduatedMethod="GraduatedColor", symbollevels="0", forceraster="0",
                      enableorderby="0")
    ranges = ET.SubElement(r, "ranges")
    syms = ET.SubElement(r, "symbols")
    n = len(breaks) - 1
    for i, (lo, hi, alpha) in enumerate(zip(breaks[:-1], breaks[1:], alphas)):
        text = f"{lo:.2f} – {hi:.2f}" + (" (tagged)" if lo >= threshold else "")
        # The last range is closed at 1 by QGIS; the first includes 0.
        ET.SubElement(ranges, "range", render="true", symbol=str(i), lower=f"{lo:.15f}",
                      upper=f"{hi:.15f}", label=text)
        fill = Color(255, 255, 255).mix(c, 0.35 + 0.65 * i / max(1, n - 1))
        syms.append(fill_symbol(str(i), fill.qgis(alpha), c.darker().qgis(0.6 if lo < threshold else 1.0),
                                0.2 if lo < threshold else 0.4))
    src = ET.SubElement(r, "source-symbol")
    src.append(fill_symbol("0", c.qgis(0.5), c.darker().qgis(1.0), 0.2))
    ramp = ET.SubElement(r, "colorramp", type="gradient", name="[source]")
    add_props(ramp, {"color1": Color(255, 255, 255).mix(c, 0.35).qgis(1.0), "color2": c.qgis(1.0),
                  "discrete": "0", "rampType": "gradient"})
    method = ET.SubElement(r, "classificationMethod", id="Custom")
    ET.SubElement(method, "symmetricMode", enabled="0", symmetrypoint="0", astride="0")
    ET.SubElement(method, "labelFormat", format="%1 - %2", labelprecision="2", trimtrailingzeroes="0")
    ET.SubElement(method, "parameters")
    ET.SubElement(method, "extraInformation")
    ET.SubElement(r, "rotation")
    ET.SubElement(r, "sizescale")
    _chips_drawn_once(r)
    return _finish(root, map_tip=_chips_map_tip(schema), preview=f'"{col}"',
                   aliases=_prob_aliases(schema), opacity=CHIP_GRADUATED_OPACITY)


def label_layer_qml(label: str, color: Color | None = None) -> str:
    """A ``label_<name>`` layer: one semi-transparent fill in ``color`` (default: the label's own)."""
    c = color or label_color(label)
    root = _qgis_root()
    r = ET.SubElement(root, "renderer-v2", type="singleSymbol", symbollevels="0", forceraster="0",
                      enableorderby="0")
    syms = ET.SubElement(r, "symbols")
    syms.append(fill_symbol("0", c.qgis(LABEL_FILL_ALPHA), c.darker(0.8).qgis(1.0), 0.5))
    ET.SubElement(r, "rotation")
    ET.SubElement(r, "sizescale")
    tip = ('<b>[% "label" %]</b><br/>\n'
           'chips: [% "n_chips" %]<br/>\n'
           'mean probability: [% format_number("mean_prob", 3) %]<br/>\n'
           'area: [% format_number("area_m2" / 10000, 2) %] ha')
    return _finish(root, map_tip=tip, preview='"label"')


#: Stops of the heat-map ramp of the probability raster: value, colour (matplotlib's
#: magma) and opacity, which rises with the probability so unlikely areas show the scene.
HEAT_RAMP: tuple[tuple[float, str, int], ...] = (
    (0.0, "#000004", 0), (0.25, "#51127c", 70), (0.5, "#b73779", 150), (0.75, "#fc8961", 200),
    (1.0, "#fcfdbf", 230),
)


def probability_raster_qml(label: str, band: int = 1) -> str:
    """QGIS style of the probability raster: ``band`` as a 0..1 heat map over the scene.

    Low probabilities are transparent, high ones nearly opaque; NaN shows nothing.
    """
    root = ET.Element("qgis", version=QML_VERSION, styleCategories="Symbology|Rendering")
    pipe = ET.SubElement(root, "pipe")
    provider = ET.SubElement(pipe, "provider")
    ET.SubElement(provider, "resampling", enabled="false", zoomedInResamplingMethod="nearestNeighbour",
                  zoomedOutResamplingMethod="nearestNeighbour", maxOversampling="2")
    r = ET.SubElement(pipe, "rasterrenderer", type="singlebandpseudocolor", band=str(band),
                      opacity="1", alphaBand="-1", classificationMin="0", classificationMax="1",
                      nodataColor="")
    mmo = ET.SubElement(r, "minMaxOrigin")
    for tag, text in (("limits", "None"), ("extent", "WholeRaster"), ("statAccuracy", "Estimated"),
                      ("cumulativeCutLower", "0.02"), ("cumulativeCutUpper", "0.98"), ("stdDevFactor", "2")):
        ET.SubElement(mmo, tag).text = text
    shader = ET.SubElement(ET.SubElement(r, "rastershader"), "colorrampshader", colorRampType="INTERPOLATED",
                           classificationMode="1", clip="0", minimumValue="0", maximumValue="1",
                           labelPrecision="2")
    for value, color, alpha in HEAT_RAMP:
        ET.SubElement(shader, "item", alpha=str(alpha), value=f"{value:g}", color=color,
                      label=f"p({xml_safe(label)}) {value:.2f}" if value in (0.0, 1.0) else f"{value:.2f}")
    ET.SubElement(pipe, "brightnesscontrast", brightness="0", contrast="0", gamma="1")
    ET.SubElement(pipe, "huesaturation", saturation="0", grayscaleMode="0", invertColors="0", colorizeOn="0",
                  colorizeRed="255", colorizeGreen="128", colorizeBlue="128", colorizeStrength="100")
    ET.SubElement(pipe, "rasterresampler", maxOversampling="2")
    ET.SubElement(root, "blendMode").text = "0"
    return qml_text(root)


def prob_style_names(labels: Sequence[str]) -> tuple[str, ...]:
    """Names of the graduated ``chips`` styles, ``prob_<label>``, unique and at most 30 characters."""
    return tuple(PROB_STYLE_PREFIX + n for n in
                 sanitize_names(labels, max_len=MAX_STYLE_NAME - len(PROB_STYLE_PREFIX)))


def build_styles(spec: ModelSpec, geometry_columns: Mapping[str, str]) -> list[LayerStyle]:
    """Every style row for the layers of ``spec``'s labels; ``geometry_columns`` maps layer -> geometry column."""
    schema = OutputSchema(spec.labels)
    geom = dict(geometry_columns)
    out = [LayerStyle(CHIPS_LAYER, geom.get(CHIPS_LAYER, "geom"), CHIPS_DEFAULT_STYLE,
                      chips_categorized_qml(schema), True,
                      "scenetag: chips categorised by top label")]
    out += weather_style(spec, geom.get(CHIPS_LAYER, "geom"))
    for i, (label, name) in enumerate(zip(schema.labels, prob_style_names(schema.labels))):
        out.append(LayerStyle(CHIPS_LAYER, geom.get(CHIPS_LAYER, "geom"), name,
                              chips_graduated_qml(schema, i, spec.thresholds[i]), False,
                              f"scenetag: chips graduated by p({label}), threshold {spec.thresholds[i]:g}"))
    for label, layer, color in zip(schema.labels, schema.label_layers, label_colors(schema.labels)):
        out.append(LayerStyle(layer, geom.get(layer, "geom"), "label_fill", label_layer_qml(label, color), True,
                              f"scenetag: footprint of {label}, filled in its colour"))
    return out


# -- writing ------------------------------------------------------------------
def ensure_style_table(con: sqlite3.Connection) -> None:
    """Create ``layer_styles`` and register it in ``gpkg_contents`` unless present."""
    exists = con.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (STYLE_TABLE,)).fetchone()
    if not exists:
        con.execute(LAYER_STYLES_DDL)
    registered = con.execute("SELECT 1 FROM gpkg_contents WHERE table_name=?", (STYLE_TABLE,)).fetchone()
    if not registered:
        con.execute(
            "INSERT INTO gpkg_contents (table_name, data_type, identifier, description, last_change) "
            "VALUES (?, 'attributes', ?, 'QGIS layer styles', strftime('%Y-%m-%dT%H:%M:%fZ','now'))",
            (STYLE_TABLE, STYLE_TABLE),
        )


_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.000Z"


def _distinct_seconds(taken: set[str], n: int) -> list[str]:
    """``n`` update times, newest first, each in a second of its own and none in ``taken``.

    QGIS 3.22 lists the styles of the other layers grouped by update time to
    the second, and repeats every style of a group once per member of that
    group: 35 styles written in the same second would show 35 times each.
    """
    t = datetime.now(timezone.utc).replace(microsecond=0)
    out: list[str] = []
    while len(out) < n:
        stamp = t.strftime(_TIME_FORMAT)
        if stamp[:19] not in taken:
            out.append(stamp)
        t -= timedelta(seconds=1)
    return out


def write_styles(con: sqlite3.Connection, styles: Sequence[LayerStyle]) -> None:
    """Insert ``styles`` into the GeoPackage of ``con``, replacing rows of the same layer and style name."""
    with con:
        ensure_style_table(con)
        for s in styles:
            con.execute(f'DELETE FROM "{STYLE_TABLE}" WHERE f_table_name=? AND styleName=?', (s.layer, s.name))
        taken = {str(r[0])[:19] for r in con.execute(f'SELECT update_time FROM "{STYLE_TABLE}"') if r[0]}
        for s, stamp in zip(styles, _distinct_seconds(taken, len(styles))):
            if s.default:  # one default per layer, as QGIS keeps it
                con.execute(f'UPDATE "{STYLE_TABLE}" SET useAsDefault=0 WHERE f_table_name=? '
                            "AND f_geometry_column=?", (s.layer, s.geometry_column))
            con.execute(
                f'INSERT INTO "{STYLE_TABLE}" (f_table_catalog, f_table_schema, f_table_name, '
                "f_geometry_column, styleName, styleQML, styleSLD, useAsDefault, description, owner, ui, "
                "update_time) VALUES ('', '', ?, ?, ?, ?, '', ?, ?, '', NULL, ?)",
                (s.layer, s.geometry_column, s.name, s.qml, 1 if s.default else 0, s.description, stamp),
            )


def add_styles(con: sqlite3.Connection, spec: ModelSpec) -> None:
    """Store the QGIS styles of the layers of ``spec``'s labels in the GeoPackage of ``con``.

    Raises ValueError when a layer is missing, and :class:`sqlite3.Error` when
    the GeoPackage cannot be read or written (the writer reports it as an
    :class:`~scenetag.errors.OutputError`).
    """
    layers = (CHIPS_LAYER, *OutputSchema(spec.labels).label_layers)
    geometry_columns = dict(con.execute("SELECT table_name, column_name FROM gpkg_geometry_columns"))
    missing = [layer for layer in layers if layer not in geometry_columns]
    if missing:
        raise ValueError(f"the GeoPackage lacks the layers {missing}: write them before their styles")
    styles = build_styles(spec, geometry_columns)
    write_styles(con, styles)
    log.debug("stored %d QGIS styles", len(styles))


def read_styles(gpkg_path: str | Path) -> list[dict]:
    """Rows of ``layer_styles`` as dicts (empty when the table is absent)."""
    con = connect_read_only(gpkg_path)
    con.row_factory = sqlite3.Row
    try:
        if not con.execute("SELECT 1 FROM sqlite_master WHERE name=?", (STYLE_TABLE,)).fetchone():
            return []
        return [dict(r) for r in con.execute(f'SELECT * FROM "{STYLE_TABLE}" ORDER BY id')]
    finally:
        con.close()
