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


def eager_grid(width, height, chip, stride, edge):
    """The grid as it was built before it was lazy: every cell made up front (the reference)."""
    from scenetag.tiler.grid import GridCell, axis_plan

    rows, cols = axis_plan(height, chip, stride, edge), axis_plan(width, chip, stride, edge)
    return [GridCell(r, c, x, y, w, h)
            for r, (y, h) in enumerate(zip(rows.offsets, rows.sizes))
            for c, (x, w) in enumerate(zip(cols.offsets, cols.sizes))]


@settings(max_examples=300, deadline=None)
@given(data=st.data(), chip=st.integers(1, 300), frac=st.floats(0.01, 1.0), edge=st.sampled_from(list(EdgePolicy)),
       per_strip=st.integers(1, 7))
def test_the_lazy_grid_equals_the_eager_one(data, chip, frac, edge, per_strip):
    from scenetag.tiler.grid import cell_array

    stride = max(1, int(chip * frac))
    # Sizes from under one chip to some 40 chips per axis: every edge case, and a quick eager reference.
    width = data.draw(st.integers(1, chip + 40 * stride), label="width")
    height = data.draw(st.integers(1, chip + 40 * stride), label="height")
    grid = chip_grid(width, height, chip, stride, edge)
    eager = eager_grid(width, height, chip, stride, edge)
    assert list(grid) == eager
    assert len(grid) == len(eager)
    strips = grid.strips(per_strip)
    assert [c for s in strips for c in s] == eager
    assert sum(len(s) for s in strips) == len(eager)
    assert all(s.row_stop - s.row_start <= per_strip for s in strips)
    expected = np.array([(c.row, c.col, c.col_off, c.row_off, c.width, c.height) for c in eager],
                        np.int32).reshape(-1, 6)
    assert np.array_equal(cell_array(grid), expected)
    assert np.array_equal(np.concatenate([s.array() for s in strips] or [expected[:0]]), expected)
    if eager:
        i = len(eager) // 2
        assert strips[0][0] == eager[0] and strips[-1][-1] == eager[-1]
        s = strips[i // (per_strip * grid.shape[1])]
        assert s[i - s.row_start * grid.shape[1]] == eager[i]


def test_a_huge_grid_knows_its_size_and_strips_without_making_its_cells():
    import tracemalloc

    tracemalloc.start()
    try:
        # Stride 1 on a 100 000 px square: ten billion chips (the eager grid ended in a MemoryError).
        grid = chip_grid(100_000, 100_000, 224, 1, "shift")
        assert grid.shape == (99_777, 99_777) and len(grid) == 99_777 ** 2 and grid.n_skipped == 0
        strips = grid.strips(1)
        assert len(strips) == 99_777
        first = next(iter(strips[-1]))
        assert (first.row, first.col, first.row_off) == (99_776, 0, 100_000 - 224)
        assert strips[3].array().shape == (99_777, 6)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 100 * 2**20, f"the grid took {peak / 2**20:.0f} MiB"
