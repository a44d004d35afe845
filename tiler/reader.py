"""Windowed chip reads with GDAL's mask, one dataset handle per thread.

The mask is read first; a chip with less valid area than ``min_valid`` is
skipped without reading its data.  Validity comes from GDAL's dataset mask
(nodata, alpha band or internal mask), never from guessing at zeros.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.windows import Window

from scenetag.errors import SceneReadError
from tiler.chip import Chip
from tiler.grid import GridCell
from tiler.scaling import Stretch
from tiler.scene import SceneInfo


@dataclass(frozen=True)
class ChipRead:
    """A chip and its pixels: uint8 ``(C, chip, chip)``, or None when skipped."""

    chip: Chip
    pixels: np.ndarray | None

    @property
    def skipped(self) -> bool:
        return self.pixels is None


class ChipReader:
    """Reads grid cells of one scene as model-ready uint8 chips.

    Args:
        scene: The scene, from :func:`tiler.scene.open_scene`.
        bands: 1-based band indexes in model order.
        chip_size: Side of the chip the model sees, in pixels.
        factor: Scene pixels per model pixel (1 unless resampling).
        stretch: Per-scene stretch to uint8, or None for uint8 scenes.
        min_valid: Chips with a smaller valid fraction are skipped.
        resampling: Resampling used when ``factor`` is not 1.
    """

    def __init__(
        self,
        scene: SceneInfo,
        bands: Sequence[int],
        chip_size: int,
        factor: float = 1.0,
        stretch: Stretch | None = None,
        min_valid: float = 0.5,
        resampling: Resampling = Resampling.bilinear,
    ) -> None:
        self.scene = scene
        self.bands = list(bands)
        self.chip_size = chip_size
        self.factor = factor
        self.stretch = stretch
        self.min_valid = min_valid
        self.resampling = resampling
        self._local = threading.local()
        self._handles: list[rasterio.DatasetReader] = []
        self._lock = threading.Lock()

    def _dataset(self) -> rasterio.DatasetReader:
        ds = getattr(self._local, "ds", None)
        if ds is None:
            ds = rasterio.open(self.scene.path)
            self._local.ds = ds
            with self._lock:
                self._handles.append(ds)
        return ds

    def close(self) -> None:
        """Close every thread's dataset handle."""
        with self._lock:
            for ds in self._handles:
                ds.close()
            self._handles.clear()
        self._local = threading.local()

    def __enter__(self) -> "ChipReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def out_shape(self, cell: GridCell) -> tuple[int, int]:
        """``(rows, cols)`` of model pixels that ``cell`` yields (before padding)."""
        if self.factor == 1.0:
            return cell.height, cell.width
        return (min(self.chip_size, max(1, round(cell.height / self.factor))),
                min(self.chip_size, max(1, round(cell.width / self.factor))))

    def read(self, cell: GridCell) -> ChipRead:
        """Read one cell: mask first, then the data if the chip is valid enough."""
        window = cell.window
        oh, ow = self.out_shape(cell)
        try:
            ds = self._dataset()
            mask = ds.dataset_mask(window=window, out_shape=(oh, ow), resampling=Resampling.nearest)
            valid = mask > 0
            fraction = float(np.count_nonzero(valid)) / float(self.chip_size * self.chip_size)
            chip = Chip(self.scene.scene_id, cell.row, cell.col, window,
                        self.scene.transform, self.scene.crs, min(1.0, fraction))
            if fraction < self.min_valid or fraction == 0.0:
                return ChipRead(chip, None)
            data = ds.read(self.bands, window=window, out_shape=(len(self.bands), oh, ow),
                           resampling=self.resampling)
        except RasterioError as exc:
            raise SceneReadError(
                f"scene {self.scene.path!r} could not be read at window {_fmt(window)}: "
                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__} "
                "(is the file truncated or corrupt?)"
            ) from exc
        pixels = self.stretch.apply(data) if self.stretch is not None else data.astype(np.uint8, copy=False)
        if not valid.all():
            pixels = np.where(valid[None], pixels, 0).astype(np.uint8)
        if (oh, ow) != (self.chip_size, self.chip_size):
            padded = np.zeros((len(self.bands), self.chip_size, self.chip_size), np.uint8)
            padded[:, :oh, :ow] = pixels
            pixels = padded
        return ChipRead(chip, np.ascontiguousarray(pixels))


def _fmt(w: Window) -> str:
    return f"(col {int(w.col_off)}, row {int(w.row_off)}, {int(w.width)}x{int(w.height)})"
