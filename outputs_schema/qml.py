"""Building blocks of the QGIS XML documents scenetag writes: styles (QML) and layer metadata.

Text goes into the XML through :mod:`xml.etree` and :func:`xml_safe`, so no
label can break a document.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Mapping

#: QML written; QGIS 3.22 (Debian 12) is the oldest release we check against.
QML_VERSION = "3.22.0-Białowieża"
QML_DOCTYPE = "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>"

_NOT_XML = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_safe(text: str) -> str:
    """``text`` with the characters XML 1.0 cannot hold (control characters) as U+FFFD."""
    return _NOT_XML.sub("\ufffd", str(text))


def add_props(parent: ET.Element, props: Mapping[str, str]) -> None:
    """Add symbol-layer properties both ways QGIS has stored them: an ``Option`` map
    (read by 3.22 and later) and the ``prop`` list (read by every 3.x)."""
    opt = ET.SubElement(parent, "Option", type="Map")
    for k, v in props.items():
        ET.SubElement(opt, "Option", name=k, type="QString", value=v)
    for k, v in props.items():
        ET.SubElement(parent, "prop", k=k, v=v)


def fill_symbol(name: str, fill: str, outline: str, outline_width: float = 0.26) -> ET.Element:
    """A QGIS fill symbol with one solid SimpleFill layer; colours in ``r,g,b,a``."""
    sym = ET.Element("symbol", type="fill", name=name, alpha="1", clip_to_extent="1", force_rhr="0")
    layer = ET.SubElement(sym, "layer", {"class": "SimpleFill", "enabled": "1", "locked": "0", "pass": "0"})
    add_props(layer, {
        "border_width_map_unit_scale": "3x:0,0,0,0,0,0",
        "color": fill,
        "joinstyle": "bevel",
        "offset": "0,0",
        "offset_map_unit_scale": "3x:0,0,0,0,0,0",
        "offset_unit": "MM",
        "outline_color": outline,
        "outline_style": "solid",
        "outline_width": f"{outline_width:g}",
        "outline_width_unit": "MM",
        "style": "solid",
    })
    return sym


def qml_text(root: ET.Element) -> str:
    """A QGIS document (style or layer metadata) as text: indented, with QGIS's doctype."""
    ET.indent(root, space=" ")
    return QML_DOCTYPE + "\n" + ET.tostring(root, encoding="unicode") + "\n"
