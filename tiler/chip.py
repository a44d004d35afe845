"""A chip: a frozen, validated description of one window read from a scene."""

from __future__ import annotations

from dataclasses import dataclass

from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window, bounds as window_bounds


@dataclass(frozen=True)
class Chip:
    """One chip of a scene.

    Attributes:
        scene_id: Identifier of the scene (its file stem).
        row, col: Position in the chip grid.
        window: Pixel window read from the scene (the footprint).
        transform: Affine transform of the scene (the window's own is derived).
        crs: CRS of the scene.
        valid_fraction: Share of valid pixels in the chip, from GDAL's mask.
    """

    scene_id: str
    row: int
    col: int
    window: Window
    transform: Affine
    crs: CRS
    valid_fraction: float

    def __post_init__(self) -> None:
        if self.row < 0 or self.col < 0:
            raise ValueError(f"chip row/col must be >= 0, got {self.row}, {self.col}")
        w = self.window
        if w.width <= 0 or w.height <= 0 or w.col_off < 0 or w.row_off < 0:
            raise ValueError(f"chip window {w} must have a positive size and non-negative offsets")
        if not 0.0 <= self.valid_fraction <= 1.0:
            raise ValueError(f"valid_fraction must be in [0, 1], got {self.valid_fraction}")
        if self.crs is None:
            raise ValueError("a chip needs a CRS")

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(left, bottom, right, top)`` of the window in the scene's CRS."""
        return window_bounds(self.window, self.transform)
