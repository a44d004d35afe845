"""Windowed chip reads with GDAL's mask, one dataset handle per thread.

Validity comes from GDAL's mask (nodata, alpha band or internal mask), never
from guessing at zeros; how it is got is the scene's :class:`~scenetag.tiler.scene.MaskMode`.
A chip with less valid area than ``min_valid`` is skipped, and its data is not
read where the mask can be had without it.  The valid share of a chip is
counted over the part of it that lies inside the scene: the padding of an
edge chip, or of the one chip of a scene smaller than a chip, is outside the
scene, not invalid pixels (a fully valid 150x150 scene is one chip, valid 1.0).

There is one read: :meth:`ChipReader.read_run` takes a run of neighbouring
cells of one grid row (one mask read and one data read over the run, which
costs far less per chip than a call per cell); :meth:`ChipReader.read` is a
run of one.  Both give a :class:`RunRead`.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.env import env_ctx_if_needed
from rasterio.errors import RasterioError
from rasterio.windows import Window

from scenetag.errors import SceneReadError
from scenetag.tiler.grid import GridCell
from scenetag.tiler.scaling import Stretch
from scenetag.tiler.scene import MaskMode, SceneInfo


@dataclass(frozen=True, eq=False)
class RunRead:
    """Cells read together: every cell's valid fraction and the pixels of the cells kept.

    ``kept`` indexes the ``cells`` whose chips are ``pixels[i]`` (uint8
    ``(n_kept, C, chip, chip)``, zero where invalid or padded); ``valid`` holds
    every cell's valid fraction (float32); the other cells were skipped.
    """

    cells: tuple[GridCell, ...]
    kept: np.ndarray
    valid: np.ndarray
    pixels: np.ndarray

    @property
    def n_skipped(self) -> int:
        """Cells skipped for too few valid pixels."""
        return len(self.cells) - len(self.kept)


class ChipReader:
    """Reads grid cells of one scene as model-ready uint8 chips.

    Args:
        scene: The scene, from :func:`tiler.scene.open_scene`; its ``mask_mode`` says how validity is read.
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
        self._nodata = _nodata_values(scene)
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

    def read(self, cell: GridCell) -> RunRead:
        """Read one cell: a run of one."""
        return self.read_run((cell,))

    def read_run(self, cells: Sequence[GridCell], out: np.ndarray | None = None) -> RunRead:
        """Read neighbouring cells of one grid row in one go.

        Validity costs as little as the scene's mask mode allows:

        * ``all_valid``: no mask is read;
        * ``nodata``: every band is read once over the run and the mask is
          derived from those pixels as GDAL derives it (a pixel is valid where
          any band differs from its nodata value), instead of letting GDAL
          decode each block again for a mask band;
        * ``gdal``: GDAL's dataset mask is read over the run, then the bands
          over the span of the kept cells.

        A resampled scene (``factor`` not 1) is read cell by cell at the
        model's resolution (mask by nearest neighbour), as resampling a span
        would mix pixels across the cells' borders.

        ``out``, if given, receives the pixels (room for ``len(cells)`` chips);
        ``pixels`` is then a view of it.
        """
        cells = tuple(cells)
        if not cells or any(c.row_off != cells[0].row_off or c.height != cells[0].height for c in cells):
            raise ValueError("read_run takes cells of one grid row")
        size = self.chip_size
        room = out if out is not None else np.empty((len(cells), len(self.bands), size, size), np.uint8)
        # A handle opened earlier is read here, maybe in another thread, outside the environment
        # rasterio.open had: without one, GDAL would print its messages raw (scenetag.gdal_messages).
        with env_ctx_if_needed():
            if self.factor == 1.0:
                kept, valid = self._read_span(cells, room)
            else:
                kept, valid = self._read_resampled(cells, room)
        return RunRead(cells, np.asarray(kept, np.int64), np.asarray(valid, np.float32), room[:len(kept)])

    def _keep(self, valid: Sequence[float]) -> list[int]:
        """Indexes of the cells valid enough to classify."""
        return [i for i, v in enumerate(valid) if v >= self.min_valid and v > 0.0]

    def _read_span(self, cells: tuple[GridCell, ...], room: np.ndarray) -> tuple[list[int], list[float]]:
        """Mask and data of ``cells`` at the scene's resolution, each in one GDAL call over the run."""
        # Plain ints: on a run of one (the thread path), numpy's per-call costs would rival GDAL's.
        x0 = [c.col_off for c in cells]
        x1 = [c.col_off + c.width for c in cells]
        y, h = cells[0].row_off, cells[0].height
        # Each cell's share is of its pixels inside the scene (its window), not of the padded chip.
        area = [float((b - a) * h) for a, b in zip(x0, x1)]
        lo, hi = min(x0), max(x1)
        span = Window(lo, y, hi - lo, h)
        mode = self.scene.mask_mode
        try:
            ds = self._dataset()
            if mode is MaskMode.ALL_VALID:
                mask = None
                valid = [1.0] * len(cells)
            else:
                if mode is MaskMode.NODATA:
                    every = ds.read(window=span)
                    if self._nodata is not None:
                        mask = (every != self._nodata).any(axis=0)
                    else:
                        mask = np.zeros(every.shape[1:], bool)
                        for band, nodata in zip(every, self.scene.nodatavals):
                            mask |= _differs_from(band, nodata)
                else:
                    mask = ds.dataset_mask(window=span) > 0
                if len(cells) == 1:
                    valid = [min(1.0, np.count_nonzero(mask) / area[0])]
                else:  # each cell's count from running column sums
                    counts = np.concatenate([[0], np.cumsum(mask.sum(axis=0, dtype=np.int64))])
                    valid = np.minimum(1.0, (counts[np.subtract(x1, lo)] - counts[np.subtract(x0, lo)]) / np.asarray(area))
                    valid = valid.tolist()
            kept = self._keep(valid)
            if len(kept) == 0:
                return kept, valid
            klo, khi = min(x0[k] for k in kept), max(x1[k] for k in kept)
            if mode is MaskMode.NODATA:  # cut to the kept cells, then put the bands in model order
                data = every[:, :, klo - lo:khi - lo]
                order = [b - 1 for b in self.bands]
                if order != list(range(len(every))):
                    data = data[order]
            else:
                data = ds.read(self.bands, window=Window(klo, y, khi - klo, h))
        except RasterioError as exc:
            raise _read_error(self.scene.path, span, exc) from exc
        kmask = mask[:, klo - lo:khi - lo] if mask is not None else None
        self._place(data, kmask, [(x0[k] - klo, x1[k] - klo) for k in kept], room)
        return kept, valid

    def _read_resampled(self, cells: tuple[GridCell, ...], room: np.ndarray) -> tuple[list[int], list[float]]:
        """Mask and data of ``cells`` at the model's resolution, one cell per GDAL call."""
        shapes = [self.out_shape(c) for c in cells]  # the cells' pixels inside the scene, at the model's resolution
        masks: list[np.ndarray | None] = []
        window = cells[0].window
        try:
            ds = self._dataset()
            for cell, shape in zip(cells, shapes):
                window = cell.window
                masks.append(None if self.scene.mask_mode is MaskMode.ALL_VALID else
                             ds.dataset_mask(window=window, out_shape=shape, resampling=Resampling.nearest) > 0)
            valid = [1.0 if mask is None else min(1.0, np.count_nonzero(mask) / float(shape[0] * shape[1]))
                     for shape, mask in zip(shapes, masks)]
            kept = self._keep(valid)
            for i, k in enumerate(kept):
                (oh, ow), window = shapes[k], cells[k].window
                data = ds.read(self.bands, window=window, out_shape=(len(self.bands), oh, ow),
                               resampling=self.resampling)
                self._place(data, masks[k], [(0, ow)], room[i:i + 1])
        except RasterioError as exc:
            raise _read_error(self.scene.path, window, exc) from exc
        return kept, valid

    def _place(self, data: np.ndarray, mask: np.ndarray | None, spans: list[tuple[int, int]],
               room: np.ndarray) -> None:
        """Stretch ``data`` (bands, rows, cols), zero it where ``mask`` is False, and cut it into ``room``.

        Chip ``i`` is columns ``spans[i]`` of ``data``; a chip smaller than the
        chip size is padded with zeros at the right and bottom.
        """
        size, h = self.chip_size, data.shape[1]
        data = self.stretch.apply(data) if self.stretch is not None else data.astype(np.uint8, copy=False)
        if mask is not None and not mask.all():
            data = np.where(mask[None], data, 0).astype(np.uint8, copy=False)
        for i, (a, b) in enumerate(spans):
            if b - a == size and h == size:
                room[i] = data[:, :, a:b]
            else:
                room[i] = 0
                room[i, :, :h, :b - a] = data[:, :, a:b]


def _nodata_values(scene: SceneInfo) -> np.ndarray | None:
    """The bands' nodata values as a ``(bands, 1, 1)`` array of the scene's type, for one comparison.

    None where a value needs :func:`_differs_from`'s care (NaN, or one the type can't hold).
    """
    if scene.mask_mode is not MaskMode.NODATA:
        return None
    dtype = np.dtype(scene.dtype)
    values = [float(v) for v in scene.nodatavals]
    if any(np.isnan(v) for v in values):
        return None
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if any(not (info.min <= v <= info.max) or v != int(v) for v in values):
            return None
    return np.asarray(values).astype(dtype).reshape(-1, 1, 1)


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
    from scenetag.tiler.location import is_network, redact, redact_text

    detail = redact_text(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    if is_network(path):
        from scenetag.errors import RemoteSceneError

        # Mid-run, a failure of the network or the server (a dropped connection, a 5xx GDAL gave up on)
        # may pass; a corrupt block does not (jobs.failures decides from the reason).
        network = re.search(r"http|curl|connect|timed? ?out|reset|ssl", detail, re.IGNORECASE)
        return RemoteSceneError(f"scene {redact(path)!r} could not be read at window {_fmt(window)}: {detail}",
                                reason="network" if network else "corrupt")
    return SceneReadError(
        f"scene {path!r} could not be read at window {_fmt(window)}: {detail} "
        "(is the file truncated or corrupt?)"
    )


def _fmt(w: Window) -> str:
    return f"(col {int(w.col_off)}, row {int(w.row_off)}, {int(w.width)}x{int(w.height)})"
