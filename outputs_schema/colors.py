"""A stable colour per label: the same label gets the same colour in every layer and run.

The 17 labels of Planet's "Understanding the Amazon from Space" have a fixed,
hand-picked palette (:data:`PLANET_PALETTE`; greens for forest, blues for
water and sky, greys for cloud and haze, warm colours for land use).  Any other
label gets a colour derived from a SHA-256 of its name, so it too never
changes between runs, models or machines (Python's ``hash()`` is salted per
process and would not do).

Labels are matched after :func:`label_key` (lower case, spaces and hyphens as
``_``), so ``"Partly cloudy"`` and ``"partly_cloudy"`` share a colour.
"""

from __future__ import annotations

import colorsys
import hashlib
import re
import unicodedata
from dataclasses import dataclass


@dataclass(frozen=True)
class Color:
    """An opaque sRGB colour, 0..255 per channel."""

    r: int
    g: int
    b: int

    def __post_init__(self) -> None:
        for name in ("r", "g", "b"):
            v = getattr(self, name)
            if not isinstance(v, int) or not 0 <= v <= 255:
                raise ValueError(f"colour channel {name}={v!r} must be an integer in 0..255")

    @classmethod
    def from_hex(cls, text: str) -> "Color":
        """From ``#rrggbb``."""
        m = re.fullmatch(r"#?([0-9a-fA-F]{2})([0-9a-fA-F]{2})([0-9a-fA-F]{2})", text.strip())
        if not m:
            raise ValueError(f"colour {text!r} is not #rrggbb")
        return cls(*(int(g, 16) for g in m.groups()))

    @property
    def hex(self) -> str:
        """``#rrggbb``, lower case."""
        return f"#{self.r:02x}{self.g:02x}{self.b:02x}"

    def qgis(self, alpha: float = 1.0) -> str:
        """QGIS's ``r,g,b,a`` notation; ``alpha`` in [0, 1]."""
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha {alpha!r} must lie in [0, 1]")
        return f"{self.r},{self.g},{self.b},{round(alpha * 255)}"

    def mix(self, other: "Color", t: float) -> "Color":
        """The colour ``t`` of the way from this one to ``other``."""
        return Color(*(round(a + (b - a) * t) for a, b in
                       ((self.r, other.r), (self.g, other.g), (self.b, other.b))))

    def darker(self, factor: float = 0.6) -> "Color":
        """This colour scaled towards black (for outlines)."""
        return self.mix(Color(0, 0, 0), 1.0 - factor)


#: Fixed colours of the 17 Planet Amazon labels.
PLANET_PALETTE: dict[str, Color] = {k: Color.from_hex(v) for k, v in {
    "agriculture": "#e6c229",
    "artisinal_mine": "#6a3d9a",
    "bare_ground": "#b5835a",
    "blooming": "#e377c2",
    "blow_down": "#8c564b",
    "clear": "#a6cee3",
    "cloudy": "#f0f0f0",
    "conventional_mine": "#cab2d6",
    "cultivation": "#fdbf6f",
    "habitation": "#e41a1c",
    "haze": "#c9b8a0",
    "partly_cloudy": "#8fa3b0",
    "primary": "#1b7837",
    "road": "#404040",
    "selective_logging": "#a6d96a",
    "slash_burn": "#d94801",
    "water": "#1f78b4",
}.items()}


def label_key(label: str) -> str:
    """The normalised name a label is looked up by."""
    text = unicodedata.normalize("NFC", str(label)).strip().lower()
    return re.sub(r"[\s\-]+", "_", text)


def hashed_color(label: str) -> Color:
    """A colour from a SHA-256 of the label's key: saturated, mid-bright, never grey."""
    digest = hashlib.sha256(label_key(label).encode("utf-8")).digest()
    hue = int.from_bytes(digest[0:2], "big") / 65536.0
    sat = 0.55 + 0.35 * digest[2] / 255.0
    val = 0.70 + 0.25 * digest[3] / 255.0
    r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
    return Color(round(r * 255), round(g * 255), round(b * 255))


def label_color(label: str) -> Color:
    """The colour of ``label``: from the Planet palette, else hashed from its name."""
    return PLANET_PALETTE.get(label_key(label)) or hashed_color(label)
