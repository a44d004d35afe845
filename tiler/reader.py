"""Windowed chip reads with GDAL's mask, one dataset handle per thread.

The mask is read first; a chip with less valid area than ``min_valid`` is
skipped without reading its data.  Validity comes from GDAL's dataset mask
(nodata, alpha band or internal mask), never from guessing at zeros.

Two ways to read: :meth:`ChipReader.read` takes one cell per GDAL call;
:meth:`ChipReader.read_run` takes a run of neighbouring cells of one grid row
in one call (mask, then data over the span of the valid cells), which costs
far less per chip on fast readers.  Both give the same chips.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import rasterio
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import RasterioError
from rasterio.windows import Window

from scenetag.errors import SceneReadError
from scenetag.tiler.chip import Chip
from scenetag.tiler.grid import GridCell
from scenetag.tiler.scaling import Stretch
from scenetag.tiler.scene import SceneInfo


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
        self._mode: str | None = None  # the scene's mask mode, found on the first run read

    def _dataset(self) -> rasterio.DatasetReader:
        ds = getattr(self._local, "ds", None)
        if ds is None:
            ds = rasterio.open(self.scene.path)
            self._local.ds = ds
            with self._lock:
                self._handles.append(ds)
        return ds

    def __getstate__(self) -> dict:
        """Pickles without its open handles (a reader process opens its own)."""
        state = self.__dict__.copy()
        for key in ("_local", "_handles", "_lock"):
            state.pop(key)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._local = threading.local()
        self._handles = []
        self._lock = threading.Lock()

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
            raise _read_error(self.scene.path, window, exc) from exc
        pixels = self.stretch.apply(data) if self.stretch is not None else data.astype(np.uint8, copy=False)
        if not valid.all():
            pixels = np.where(valid[None], pixels, 0).astype(np.uint8)
        if (oh, ow) != (self.chip_size, self.chip_size):
            padded = np.zeros((len(self.bands), self.chip_size, self.chip_size), np.uint8)
            padded[:, :oh, :ow] = pixels
            pixels = padded
        return ChipRead(chip, np.ascontiguousarray(pixels))


    def _mask_mode(self, ds: rasterio.DatasetReader) -> str:
        """How this scene's validity is known: "all_valid", "nodata" (per band) or "gdal" (others).

        Fixed per scene, so GDAL is asked once per reader, not on every run.
        """
        if self._mode is None:
            flags = ds.mask_flag_enums
            if all(f == [MaskFlags.all_valid] for f in flags):
                self._mode = "all_valid"
            elif all(f == [MaskFlags.nodata] for f in flags) and all(v is not None for v in ds.nodatavals):
                self._mode = "nodata"
            else:
                self._mode = "gdal"
        return self._mode

    def read_run(self, cells: Sequence[GridCell], out: np.ndarray | None = None) -> RunRead:
        """Read neighbouring cells of one grid row in one go; the same chips as :meth:`read` on each.

        Validity costs as little as the scene allows:

        * no mask at all (GDAL's "all valid"): no mask is read;
        * nodata values only: every band is read once over the run and the
          mask is derived from those pixels as GDAL derives it (a pixel is
          valid where any band differs from its nodata value), instead of
          letting GDAL decode each block again for a mask band;
        * alpha band, mask band or per-dataset nodata: GDAL's dataset mask is
          read over the run, then the bands over the span of the kept cells.

        A resampled scene (``factor`` not 1) is read one cell at a time with
        :meth:`read`.

        ``out``, if given, receives the pixels (room for ``len(cells)`` chips);
        ``pixels`` is then a view of it.
        """
        if not cells or any(c.row_off != cells[0].row_off or c.height != cells[0].height for c in cells):
            raise ValueError("read_run takes cells of one grid row")
        n, size, nb = len(cells), self.chip_size, len(self.bands)
        if self.factor != 1.0:
            return self._read_each(cells, out)
        x0 = np.fromiter((c.col_off for c in cells), np.int64, n)
        x1 = x0 + np.fromiter((c.width for c in cells), np.int64, n)
        y, h = cells[0].row_off, cells[0].height
        lo, hi = int(x0.min()), int(x1.max())
        span = Window(lo, y, hi - lo, h)
        try:
            ds = self._dataset()
            mode = self._mask_mode(ds)
            if mode == "all_valid":
                mask = None
                valid = (x1 - x0) * h / float(size * size)
            elif mode == "nodata":
                every = ds.read(window=span)
                mask = np.zeros(every.shape[1:], bool)
                for band, nodata in zip(every, ds.nodatavals):
                    mask |= _differs_from(band, nodata)
                order = [b - 1 for b in self.bands]
            else:
                mask = ds.dataset_mask(window=span) > 0
            if mask is not None:
                counts = np.concatenate([[0], np.cumsum(mask.sum(axis=0, dtype=np.int64))])
                valid = (counts[x1 - lo] - counts[x0 - lo]) / float(size * size)
            valid = np.minimum(1.0, valid)
            kept = np.flatnonzero((valid >= self.min_valid) & (valid > 0.0))
            pixels = (out[:len(kept)] if out is not None
                      else np.empty((len(kept), nb, size, size), np.uint8))
            if len(kept) == 0:
                return RunRead(kept, valid.astype(np.float32), pixels)
            klo, khi = int(x0[kept].min()), int(x1[kept].max())
            if mode == "nodata":  # cut to the kept cells, then put the bands in model order
                data = every[:, :, klo - lo:khi - lo]
                if order != list(range(len(every))):
                    data = data[order]
            else:
                data = ds.read(self.bands, window=Window(klo, y, khi - klo, h))
        except RasterioError as exc:
            raise _read_error(self.scene.path, span, exc) from exc
        data = self.stretch.apply(data) if self.stretch is not None else data.astype(np.uint8, copy=False)
        if mask is not None:
            kmask = mask[:, klo - lo:khi - lo]
            if not kmask.all():
                data = np.where(kmask[None], data, 0).astype(np.uint8, copy=False)
        for i, k in enumerate(kept):
            a, b = int(x0[k]) - klo, int(x1[k]) - klo
            if b - a == size and h == size:
                pixels[i] = data[:, :, a:b]
            else:
                pixels[i] = 0
                pixels[i, :, :h, :b - a] = data[:, :, a:b]
        return RunRead(kept, valid.astype(np.float32), pixels)


    def _read_each(self, cells: Sequence[GridCell], out: np.ndarray | None) -> "RunRead":
        """:meth:`read_run`'s result, from one :meth:`read` per cell."""
        reads = [self.read(c) for c in cells]
        kept = np.asarray([i for i, r in enumerate(reads) if not r.skipped], np.int64)
        valid = np.asarray([r.chip.valid_fraction for r in reads], np.float32)
        pixels = (out[:len(kept)] if out is not None
                  else np.empty((len(kept), len(self.bands), self.chip_size, self.chip_size), np.uint8))
        for i, k in enumerate(kept):
            pixels[i] = reads[k].pixels
        return RunRead(kept, valid, pixels)


@dataclass(frozen=True)
class RunRead:
    """A run of cells read together: the chips kept, their pixels and the skipped count.

    ``kept`` indexes the run's cells whose pixels are ``pixels[i]`` (uint8
    ``(n_kept, C, chip, chip)``); ``valid`` holds every cell's valid fraction.
    """

    kept: np.ndarray
    valid: np.ndarray
    pixels: np.ndarray


def _differs_from(band: np.ndarray, nodata: float) -> np.ndarray:
    """Where ``band`` is not its nodata value (NaN-aware; a value the type can't hold never matches)."""
    if np.isnan(nodata):
        return ~np.isnan(band) if band.dtype.kind == "f" else np.ones(band.shape, bool)
    if band.dtype.kind in "iu":
        info = np.iinfo(band.dtype)
        if not (info.min <= nodata <= info.max) or nodata != int(nodata):
            return np.ones(band.shape, bool)
    return band != band.dtype.type(nodata)


def _read_error(path: str, window: Window, exc: Exception) -> SceneReadError:
    return SceneReadError(
        f"scene {path!r} could not be read at window {_fmt(window)}: "
        f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__} "
        "(is the file truncated or corrupt?)"
    )


def _fmt(w: Window) -> str:
    return f"(col {int(w.col_off)}, row {int(w.row_off)}, {int(w.width)}x{int(w.height)})"
