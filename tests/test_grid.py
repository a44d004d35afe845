"""The chip grid: counts follow the formula, edges are never silently lost."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scenetag.tiler.grid import EdgePolicy, chip_grid, stride_from_overlap


def expected_axis(length: int, chip: int, stride: int, edge: EdgePolicy) -> int:
    n_full = (length - chip) // stride + 1 if length >= chip else 0
    covered = (n_full - 1) * stride + chip if n_full else 0
    partial = covered < length
    return n_full + (1 if partial and edge is not EdgePolicy.SKIP else 0)


dims = st.integers(min_value=1, max_value=400)
chips = st.integers(min_value=8, max_value=256)


@settings(max_examples=300, deadline=None)
@given(width=dims, height=dims, chip=chips, frac=st.floats(0.25, 1.0), edge=st.sampled_from(list(EdgePolicy)))
def test_grid_count_coverage_and_bounds(width, height, chip, frac, edge):
    stride = max(1, int(chip * frac))
    grid = chip_grid(width, height, chip, stride, edge)
    cells = list(grid)
    nr, nc = expected_axis(height, chip, stride, edge), expected_axis(width, chip, stride, edge)
    assert grid.shape == (nr, nc)
    assert len(cells) == len(grid) == nr * nc
    covered = np.zeros((height, width), bool)
    for cell in cells:
        # Every window lies inside the raster and is never larger than a chip.
        assert 0 <= cell.col_off and cell.col_off + cell.width <= width
        assert 0 <= cell.row_off and cell.row_off + cell.height <= height
        assert 1 <= cell.width <= chip and 1 <= cell.height <= chip
        if edge is EdgePolicy.SHIFT and width >= chip:
            assert cell.width == chip
        covered[cell.row_off:cell.row_off + cell.height, cell.col_off:cell.col_off + cell.width] = True
    if edge is EdgePolicy.SKIP:
        # What is not covered was counted as skipped.
        full_r = (height - chip) // stride + 1 if height >= chip else 0
        full_c = (width - chip) // stride + 1 if width >= chip else 0
        total_r = full_r + (1 if (full_r - 1) * stride + chip < height or full_r == 0 else 0)
        total_c = full_c + (1 if (full_c - 1) * stride + chip < width or full_c == 0 else 0)
        assert grid.n_skipped == total_r * total_c - nr * nc
    else:
        assert covered.all(), "shift and pad cover every pixel"
        assert grid.n_skipped == 0


def test_small_raster_is_one_padded_chip_unless_skipped():
    g = chip_grid(100, 50, 256, edge="shift")
    (cell,) = list(g)
    assert (cell.width, cell.height) == (100, 50)
    g = chip_grid(100, 50, 256, edge="skip")
    assert len(g) == 0 and g.n_skipped == 1


def test_shift_moves_last_chip_back_to_the_edge():
    g = chip_grid(600, 256, 256)
    assert [c.col_off for c in g] == [0, 256, 344]


def test_stride_cannot_exceed_chip():
    with pytest.raises(ValueError, match="stride 300 is larger than the chip 256"):
        chip_grid(1000, 1000, 256, 300)


def test_overlap_to_stride():
    assert stride_from_overlap(256, 0.5) == 128
    assert stride_from_overlap(256, 0.0) == 256
    with pytest.raises(ValueError):
        stride_from_overlap(256, 1.0)


def test_strips_partition_the_grid():
    g = chip_grid(1000, 900, 128, 100)
    strips = g.strips(2)
    assert sum(len(s) for s in strips) == len(g)
    assert len(strips) == math.ceil(g.shape[0] / 2)
    assert [c for s in strips for c in s] == list(g)


@pytest.mark.parametrize("args,match", [
    ((-1, 0, 0, 0, 8, 8), "row and col"),
    ((0, -2, 0, 0, 8, 8), "row and col"),
    ((0, 0, -1, 0, 8, 8), "offsets"),
    ((0, 0, 0, -5, 8, 8), "offsets"),
    ((0, 0, 0, 0, 0, 8), "at least 1x1"),
    ((0, 0, 0, 0, 8, -1), "at least 1x1"),
])
def test_a_grid_cell_is_validated_when_it_is_made(args, match):
    from scenetag.tiler.grid import GridCell

    with pytest.raises(ValueError, match=match):
        GridCell(*args)


def test_a_grid_cell_is_frozen_and_gives_its_window():
    import dataclasses

    from rasterio.windows import Window

    from scenetag.tiler.grid import GridCell

    cell = GridCell(1, 2, 20, 10, 8, 6)
    assert cell.window == Window(20, 10, 8, 6)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cell.row = 3  # type: ignore[misc]
