"""Tiler: open a scene, lay a chip grid over it, and read chips with their masks."""

from scenetag.tiler.chip import Chip
from scenetag.tiler.grid import EdgePolicy, GridCell, chip_grid

__all__ = ["Chip", "EdgePolicy", "GridCell", "chip_grid"]
