"""A stable colour per label: the same label gets the same colour in every layer and run.

Colours come from colorcet's ``glasbey_category10``: matplotlib's ten category
colours, continued by Glasbey's method (each next colour as far as possible in
CAM02-UCS from all before it), so the first colours are the most distinct.
The 17 labels of Planet's "Understanding the Amazon from Space" have fixed
places in it (:data:`PLANET_INDEX`), picked so that the meaning still helps
(blue water, green forest, red habitation, pale cloud and haze) while every
pair stays distinguishable as drawn at the styles' opacity over light, dark
and forest backgrounds (``tests/test_styles.py`` measures CIEDE2000: at least
8.4 apart, where the hand-picked palette before this one had clear and
partly_cloudy 5.2 apart).

Any other label takes a place of its own from a SHA-256 of its name (Python's
``hash()`` is salted per process and would not do), among the colours no
Planet label uses; :func:`label_colors` moves a label of a model to the next
free place where two would collide, so one model's labels never share a
colour, and a label keeps its colour across runs of that model.

Labels are matched after :func:`label_key` (lower case, spaces and hyphens as
``_``), so ``"Partly cloudy"`` and ``"partly_cloudy"`` share a colour.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from typing import Sequence

import colorcet


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


#: The palette (colorcet's, 256 colours); a label's colour is a place in it.
PALETTE: tuple[Color, ...] = tuple(Color.from_hex(h) for h in colorcet.palette["glasbey_category10"])

#: Places of the 17 Planet Amazon labels in :data:`PALETTE`: the first 16 colours but the
#: 17th (magenta), and the palest of the first 24 for cloud.
PLANET_INDEX: dict[str, int] = {
    "water": 0,               # blue
    "cultivation": 1,         # orange
    "primary": 2,             # green
    "habitation": 3,          # red
    "conventional_mine": 4,   # purple
    "bare_ground": 5,         # brown
    "blooming": 6,            # pink
    "road": 7,                # grey
    "agriculture": 8,         # olive
    "clear": 9,               # cyan
    "artisinal_mine": 10,     # indigo
    "blow_down": 11,          # dark green
    "selective_logging": 12,  # mint
    "slash_burn": 13,         # maroon
    "partly_cloudy": 14,      # pale lavender
    "haze": 15,               # dusty beige
    "cloudy": 21,             # pale yellow
}

#: Fixed colours of the 17 Planet Amazon labels.
PLANET_PALETTE: dict[str, Color] = {k: PALETTE[i] for k, i in PLANET_INDEX.items()}

#: Places other labels draw from: every one no Planet label takes.
_FREE = tuple(i for i in range(len(PALETTE)) if i not in set(PLANET_INDEX.values()))


def label_key(label: str) -> str:
    """The normalised name a label is looked up by."""
    text = unicodedata.normalize("NFC", str(label)).strip().lower()
    return re.sub(r"[\s\-]+", "_", text)


def _hashed_place(label: str) -> int:
    """The first choice of place in :data:`_FREE` of a label not in the Planet palette, from a SHA-256."""
    digest = hashlib.sha256(label_key(label).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") % len(_FREE)


def label_colors(labels: Sequence[str]) -> tuple[Color, ...]:
    """The colour of each of one model's ``labels``: Planet labels their own, the others hashed,
    a collision moved to the next free place (in label order), so no two labels share a colour
    while there are colours left (239 besides the Planet labels')."""
    taken = {PLANET_INDEX[label_key(lb)] for lb in labels if label_key(lb) in PLANET_INDEX}
    out: list[Color] = []
    seen: dict[str, Color] = {}
    for label in labels:
        key = label_key(label)
        if key in PLANET_INDEX:
            out.append(PALETTE[PLANET_INDEX[key]])
            continue
        if key not in seen:  # the same label twice (the spec refuses it) keeps one colour
            place = _hashed_place(label)
            free = [_FREE[(place + step) % len(_FREE)] for step in range(len(_FREE))]
            index = next((i for i in free if i not in taken), free[0])  # more labels than colours: share
            taken.add(index)
            seen[key] = PALETTE[index]
        out.append(seen[key])
    return tuple(out)


def label_color(label: str) -> Color:
    """The colour of ``label`` alone (in a model, :func:`label_colors` of all its labels decides)."""
    return label_colors([label])[0]
