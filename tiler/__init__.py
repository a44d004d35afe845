"""Tiler: open a scene, lay a chip grid over it, and read chips with their masks."""

from scenetag.tiler.grid import EdgePolicy, GridCell, chip_grid
from scenetag.tiler.scene import MaskMode

__all__ = ["EdgePolicy", "GridCell", "MaskMode", "chip_grid"]
