"""The chip grid: a pure function of raster size, chip size, stride and edge policy.

Along each axis, chips start at ``0, stride, 2*stride, ...`` while they fit.
What is left at the far edge is handled by the :class:`EdgePolicy`:

``shift``
    One more chip, moved back so it ends on the raster edge (it overlaps its
    neighbour).  Every chip is full size.  Where the raster is smaller than one
    chip, there is nothing to shift against and the chip is padded (``pad``).
``pad``
    One more chip at the next stride position, clipped to the raster; the
    reader pads it to full size with invalid pixels.
``skip``
    The partial chip is dropped and counted in :attr:`Grid.n_skipped`.

So, per axis with ``n_full = (L - chip) // stride + 1`` (0 when ``L < chip``)
and a remainder when the last full chip ends before ``L``, the count is
``n_full + 1`` under shift or pad and ``n_full`` under skip.  Footprints are
always the window actually read.

The grid is lazy: only the per-axis offsets are computed (a few thousand
numbers, even on a 100 000 px scene), and a :class:`GridCell` is made when
it is iterated.  ``len()``, :attr:`Grid.shape`, :attr:`Grid.n_skipped` and
:meth:`Grid.strips` never make the cells, so a grid of billions of chips
costs the same memory as one of ten (the job refuses such runs by choice,
``RunOptions.max_chips``, not by running out of memory).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Iterator, Sequence, overload

import numpy as np
from rasterio.windows import Window


class EdgePolicy(str, enum.Enum):
    """What to do with the partial chips at the right and bottom edges."""

    SHIFT = "shift"
    PAD = "pad"
    SKIP = "skip"


@dataclass(frozen=True)
class GridCell:
    """One chip of a grid: its row and column and the pixel window it reads (the footprint).

    The one value for a chip's position; validated here, so its users need not.
    """

    row: int
    col: int
    col_off: int
    row_off: int
    width: int
    height: int

    def __post_init__(self) -> None:
        if self.row < 0 or self.col < 0:
            raise ValueError(f"grid cell row and col must be >= 0, got {self.row}, {self.col}")
        if self.col_off < 0 or self.row_off < 0:
            raise ValueError(f"grid cell offsets must be >= 0, got col_off {self.col_off}, row_off {self.row_off}")
        if self.width < 1 or self.height < 1:
            raise ValueError(f"grid cell window must be at least 1x1 pixels, got {self.width}x{self.height}")

    @property
    def window(self) -> Window:
        """The pixel window the cell reads."""
        return Window(self.col_off, self.row_off, self.width, self.height)


@dataclass(frozen=True)
class AxisPlan:
    """Chip offsets and sizes along one axis, and how many partial chips were skipped."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    n_skipped: int


def axis_plan(length: int, chip: int, stride: int, edge: EdgePolicy) -> AxisPlan:
    """Offsets and sizes of the chips along an axis of ``length`` pixels."""
    if length < 1 or chip < 1 or stride < 1:
        raise ValueError(f"length, chip and stride must be >= 1, got {length}, {chip}, {stride}")
    edge = EdgePolicy(edge)
    n_full = (length - chip) // stride + 1 if length >= chip else 0
    offsets = [i * stride for i in range(n_full)]
    sizes = [chip] * n_full
    covered = offsets[-1] + chip if offsets else 0
    skipped = 0
    if covered < length:
        if edge is EdgePolicy.SKIP:
            skipped = 1
        elif edge is EdgePolicy.SHIFT and length >= chip:
            offsets.append(length - chip)
            sizes.append(chip)
        else:  # pad, or shift on an axis shorter than one chip
            off = n_full * stride
            offsets.append(off)
            sizes.append(min(chip, length - off))
    return AxisPlan(tuple(offsets), tuple(sizes), skipped)


@dataclass(frozen=True)
class Grid:
    """A chip grid over a raster of ``width`` x ``height`` pixels."""

    width: int
    height: int
    chip: int
    stride: int
    edge: EdgePolicy

    def __post_init__(self) -> None:
        object.__setattr__(self, "edge", EdgePolicy(self.edge))
        if self.chip < 1 or self.stride < 1:
            raise ValueError(f"chip and stride must be >= 1, got {self.chip}, {self.stride}")
        if self.stride > self.chip:
            raise ValueError(
                f"stride {self.stride} is larger than the chip {self.chip}: pixels between "
                "chips would never be classified"
            )

    # The per-axis plans are cheap (one number per chip row or column) and
    # asked for on every cell, so they are computed once per grid.
    @cached_property
    def _rows(self) -> AxisPlan:
        return axis_plan(self.height, self.chip, self.stride, self.edge)

    @cached_property
    def _cols(self) -> AxisPlan:
        return axis_plan(self.width, self.chip, self.stride, self.edge)

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_rows, n_cols)``."""
        return len(self._rows.offsets), len(self._cols.offsets)

    def __len__(self) -> int:
        r, c = self.shape
        return r * c

    @property
    def n_skipped(self) -> int:
        """Partial edge chips dropped by the ``skip`` policy."""
        rows, cols = self._rows, self._cols
        nr, nc = len(rows.offsets), len(cols.offsets)
        return (nr + rows.n_skipped) * (nc + cols.n_skipped) - nr * nc

    def cell(self, row: int, col: int) -> GridCell:
        """The cell at chip row ``row``, column ``col``."""
        rows, cols = self._rows, self._cols
        return GridCell(row, col, cols.offsets[col], rows.offsets[row], cols.sizes[col], rows.sizes[row])

    def rows(self, start: int, stop: int) -> "GridStrip":
        """The cells of chip rows ``start`` to ``stop`` (exclusive), lazily."""
        n_rows = self.shape[0]
        start, stop = max(0, min(start, n_rows)), max(0, min(stop, n_rows))
        return GridStrip(self, start, max(start, stop))

    def __iter__(self) -> Iterator[GridCell]:
        return iter(self.rows(0, self.shape[0]))

    def strips(self, rows_per_strip: int) -> list["GridStrip"]:
        """The grid cut into strips of ``rows_per_strip`` chip rows; each strip makes its cells when iterated."""
        per = max(1, rows_per_strip)
        n_rows = self.shape[0]
        return [self.rows(r, r + per) for r in range(0, n_rows, per)] if len(self) else []


@dataclass(frozen=True)
class GridStrip(Sequence[GridCell]):
    """Chip rows ``row_start`` to ``row_stop`` (exclusive) of a grid: a lazy sequence of its cells, in grid order.

    Small whatever its size (the grid and two numbers), so it is what goes to
    a task; its cells are made as they are iterated.
    """

    grid: Grid
    row_start: int
    row_stop: int

    @property
    def n_cols(self) -> int:
        return self.grid.shape[1]

    def __len__(self) -> int:
        return (self.row_stop - self.row_start) * self.n_cols

    @overload
    def __getitem__(self, index: int) -> GridCell: ...
    @overload
    def __getitem__(self, index: slice) -> list[GridCell]: ...

    def __getitem__(self, index: int | slice) -> GridCell | list[GridCell]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"cell {index} is outside the strip's {n} cells")
        r, c = divmod(index, self.n_cols)
        return self.grid.cell(self.row_start + r, c)

    def __iter__(self) -> Iterator[GridCell]:
        rows, cols = self.grid._rows, self.grid._cols
        col_plan = list(enumerate(zip(cols.offsets, cols.sizes)))
        for r in range(self.row_start, self.row_stop):
            y, h = rows.offsets[r], rows.sizes[r]
            for c, (x, w) in col_plan:
                yield GridCell(r, c, x, y, w, h)

    def array(self) -> np.ndarray:
        """The strip's cells as an ``(n, 6)`` int32 array of ``row, col, col_off, row_off, width, height``.

        Made without a :class:`GridCell` per cell, for the readers that keep
        their cells' positions as arrays.
        """
        rows, cols = self.grid._rows, self.grid._cols
        r = np.arange(self.row_start, self.row_stop, dtype=np.int32)
        c = np.arange(self.n_cols, dtype=np.int32)
        rr, cc = np.repeat(r, len(c)), np.tile(c, len(r))
        y = np.asarray(rows.offsets, np.int32)[rr] if len(rr) else rr
        h = np.asarray(rows.sizes, np.int32)[rr] if len(rr) else rr
        x = np.asarray(cols.offsets, np.int32)[cc] if len(cc) else cc
        w = np.asarray(cols.sizes, np.int32)[cc] if len(cc) else cc
        return np.stack([rr, cc, x, y, w, h], axis=1).astype(np.int32, copy=False).reshape(-1, 6)


def as_strip(cells: Sequence[GridCell]) -> GridStrip | None:
    """``cells`` as a :class:`GridStrip` when it is a grid or a strip (whose shape is known without
    iterating it); None for any other sequence of cells."""
    if isinstance(cells, GridStrip):
        return cells
    if isinstance(cells, Grid):
        return cells.rows(0, cells.shape[0])
    return None


def cell_array(cells: Sequence[GridCell]) -> np.ndarray:
    """``cells`` as an ``(n, 6)`` int32 array (see :meth:`GridStrip.array`), without making cells of a grid."""
    strip = as_strip(cells)
    if strip is not None:
        return strip.array()
    return np.array([(c.row, c.col, c.col_off, c.row_off, c.width, c.height) for c in cells],
                    np.int32).reshape(-1, 6)


def chip_grid(
    width: int, height: int, chip: int, stride: int | None = None, edge: EdgePolicy | str = EdgePolicy.SHIFT
) -> Grid:
    """The chip grid over a ``width`` x ``height`` raster (stride defaults to the chip size)."""
    return Grid(width, height, chip, chip if stride is None else stride, EdgePolicy(edge))


def stride_from_overlap(chip: int, overlap: float) -> int:
    """Stride for a fractional ``overlap`` in [0, 1) between neighbouring chips."""
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    return max(1, int(math.floor(chip * (1 - overlap) + 1e-9)))
