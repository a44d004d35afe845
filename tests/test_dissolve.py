"""The chip-window dissolve equals shapely's union of the same footprints, exactly."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import shapely
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.crs import CRS
from rasterio import features
from shapely import affinity

from scenetag.outputs_schema import dissolve
from scenetag.outputs_schema.dissolve import dissolve_windows
from scenetag.outputs_schema.records import ChipTable
from scenetag.outputs_schema.schema import LABEL_FIELDS
from scenetag.outputs_schema.geopackage import footprints, label_frame

NORTH_UP = Affine(3.0, 0.0, 500000.0, 0.0, -3.0, 100000.0)
TRANSFORMS = (
    NORTH_UP,
    Affine(0.5, 0.0, -10.0, 0.0, 0.5, 20.0),  # south-up: a positive row step
    Affine(0.3, 0.0, 123456.7, 0.0, -0.3, 7654321.1),  # fractional pixel size
    Affine.translation(350000.0, 4200000.0) @ Affine.rotation(30.0) @ Affine.scale(10.0, -10.0),
    Affine(2.0, 0.7, 1000.0, -0.4, -3.0, 5000.0),  # rotated and sheared
)


def axis_windows(length: int, chip: int, stride: int, edge: str) -> list[tuple[int, int]]:
    """(offset, size) along one axis, with the shift, pad (clipped) or skip edge policy."""
    n_full = (length - chip) // stride + 1 if length >= chip else 0
    out = [(i * stride, chip) for i in range(n_full)]
    end = out[-1][0] + chip if out else 0
    if end < length:
        if edge == "shift" and length >= chip:
            out.append((length - chip, chip))
        elif edge in ("shift", "pad"):
            off = n_full * stride
            out.append((off, length - off))
    return out


def grid_table(width: int, height: int, chip: int, stride: int, edge: str) -> ChipTable:
    """A chip table of the grid's windows (probabilities unused)."""
    rows = [(r, c, x, y, w, h, 1.0)
            for r, (y, h) in enumerate(axis_windows(height, chip, stride, edge))
            for c, (x, w) in enumerate(axis_windows(width, chip, stride, edge))]
    return ChipTable.from_rows(rows, np.zeros((len(rows), 1), np.float32))


def table_of(windows: list[tuple[int, int, int, int]]) -> ChipTable:
    rows = [(0, i, x, y, w, h, 1.0) for i, (x, y, w, h) in enumerate(windows)]
    return ChipTable.from_rows(rows, np.zeros((len(rows), 1), np.float32))


def dissolved(table: ChipTable, mask: np.ndarray, transform: Affine) -> shapely.MultiPolygon:
    return dissolve_windows(table.x_off[mask], table.y_off[mask], table.width[mask],
                            table.height[mask], transform)


def assert_same_as_union(table: ChipTable, mask: np.ndarray, transform: Affine) -> shapely.MultiPolygon:
    """The dissolve is a valid, oriented MultiPolygon equal to union_all of the footprints.

    In pixel space, and under any axis-aligned affine, the equality is exact
    (``shapely.equals``).  Under a rotated or sheared affine, union_all
    itself works on rounded corner coordinates and can leave round-off
    artefacts (near-collinear extra vertices, slivers of 1e-9 square units),
    so there the dissolve must be the affine image of the exact pixel-space
    union, and equal to union_all up to round-off.
    """
    pixel = dissolved(table, mask, Affine.identity())
    pixel_want = shapely.union_all(footprints(table, Affine.identity())[mask])
    got = dissolved(table, mask, transform)
    want = shapely.union_all(footprints(table, transform)[mask])
    for g in (pixel, got):
        assert g.geom_type == "MultiPolygon"
        assert shapely.is_valid(g), shapely.is_valid_reason(g)
        for poly in g.geoms:
            assert poly.exterior.is_ccw
            assert not any(ring.is_ccw for ring in poly.interiors)
    if pixel_want.is_empty:
        assert pixel.is_empty and got.is_empty and want.is_empty
        return got
    assert shapely.equals(pixel, pixel_want) and pixel.area == pixel_want.area
    assert len(pixel.geoms) == len(shapely.get_parts(pixel_want))
    assert sum(len(p.interiors) for p in pixel.geoms) == \
        sum(len(p.interiors) for p in shapely.get_parts(pixel_want))
    t = transform
    image = affinity.affine_transform(pixel, [t.a, t.b, t.d, t.e, t.c, t.f])
    scale = max(abs(t.c), abs(t.f), 1.0)
    assert shapely.equals_exact(shapely.normalize(got), shapely.normalize(image), tolerance=1e-12 * scale)
    assert math.isclose(got.area, want.area, rel_tol=1e-9)
    if t.b == 0 and t.d == 0:
        assert shapely.equals(got, want)
    else:
        assert shapely.symmetric_difference(got, want).area <= 1e-9 * want.area
    return got


@settings(max_examples=150, deadline=None)
@given(width=st.integers(1, 120), height=st.integers(1, 120), chip=st.integers(4, 32),
       frac=st.floats(0.25, 1.0), edge=st.sampled_from(["shift", "pad", "skip"]),
       transform=st.sampled_from(TRANSFORMS), seed=st.integers(0, 2**32 - 1),
       p=st.floats(0.0, 1.0))
def test_random_selections_of_a_grid_equal_the_union(width, height, chip, frac, edge, transform, seed, p):
    # Strides below the chip overlap neighbours; shift moves the last row and column inside.
    table = grid_table(width, height, chip, max(1, int(chip * frac)), edge)
    mask = np.random.default_rng(seed).random(len(table)) < p
    assert_same_as_union(table, mask, transform)


windows = st.tuples(st.integers(0, 20), st.integers(0, 20), st.integers(1, 12), st.integers(1, 12))


@settings(max_examples=150, deadline=None)
@given(wins=st.lists(windows, min_size=1, max_size=25), transform=st.sampled_from(TRANSFORMS))
def test_arbitrary_windows_equal_the_union(wins, transform):
    table = table_of(wins)
    assert_same_as_union(table, np.ones(len(table), bool), transform)


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_cells_touching_at_corners_stay_separate(transform):
    table = grid_table(40, 40, 10, 10, "shift")
    mask = (table.row + table.col) % 2 == 0  # a checkerboard
    got = assert_same_as_union(table, mask, transform)
    assert len(got.geoms) == mask.sum()


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_a_ring_of_chips_keeps_its_hole(transform):
    table = grid_table(30, 30, 10, 10, "shift")
    mask = ~((table.row == 1) & (table.col == 1))
    got = assert_same_as_union(table, mask, transform)
    assert len(got.geoms) == 1 and len(got.geoms[0].interiors) == 1
    assert math.isclose(got.area, 8 * 100 * abs(transform.determinant))


def test_a_hole_touching_the_shell_at_a_corner():
    # 1 1 1 0
    # 1 0 1 0
    # 1 1 0 1
    # 0 0 1 1
    cells = np.array([[1, 1, 1, 0], [1, 0, 1, 0], [1, 1, 0, 1], [0, 0, 1, 1]], bool)
    table = grid_table(40, 40, 10, 10, "shift")
    mask = cells[table.row, table.col]
    for transform in TRANSFORMS:
        assert_same_as_union(table, mask, transform)


def test_overlapping_shifted_grid_with_a_hole():
    # Stride 6 < chip 10 and a shifted last column and row: a hole only where no chip reaches.
    table = grid_table(47, 47, 10, 6, "shift")
    centre = (table.x_off <= 20) & (table.x_off + table.width >= 26) & \
             (table.y_off <= 20) & (table.y_off + table.height >= 26)
    mask = ~((table.x_off < 26) & (table.x_off + table.width > 20) &
             (table.y_off < 26) & (table.y_off + table.height > 20))
    assert centre.any() and not mask[centre].any()
    got = assert_same_as_union(table, mask, NORTH_UP)
    assert sum(len(p.interiors) for p in got.geoms) == 1


def test_empty_selection_is_an_empty_multipolygon():
    table = grid_table(40, 40, 10, 10, "shift")
    got = dissolved(table, np.zeros(len(table), bool), NORTH_UP)
    assert got.geom_type == "MultiPolygon" and got.is_empty


def test_two_overlapping_windows_dissolve_to_their_outline():
    got = dissolve_windows(np.array([0, 5]), np.array([0, 0]), np.array([10, 10]), np.array([10, 3]),
                           Affine.identity())
    assert got.area == 115
    outline = shapely.Polygon([(0, 0), (15, 0), (15, 3), (10, 3), (10, 10), (0, 10)])
    assert shapely.equals(got, shapely.MultiPolygon([outline]))


def test_a_lattice_too_large_falls_back_to_the_vector_union(monkeypatch):
    def no_lattice(*args, **kwargs):
        raise AssertionError("a lattice over MAX_LATTICE_CELLS must not be built")

    monkeypatch.setattr(dissolve, "MAX_LATTICE_CELLS", 0)
    monkeypatch.setattr(features, "shapes", no_lattice)  # the lattice is polygonized by GDAL
    table = grid_table(60, 60, 10, 7, "shift")
    mask = np.random.default_rng(1).random(len(table)) < 0.5
    for transform in TRANSFORMS:
        assert_same_as_union(table, mask, transform)


def test_label_frame_dissolves_20k_chips_through_the_lattice(monkeypatch):
    def no_vector_union(*args, **kwargs):
        raise AssertionError("20k chip windows must be dissolved on the lattice, not with union_all")

    monkeypatch.setattr(shapely, "union_all", no_vector_union)
    side = 142  # 20164 chips
    table = grid_table(side * 256, side * 256, 256, 256, "shift")
    assert len(table) == side * side
    mask = (table.row + table.col) % 2 == 0
    probs = np.where(mask, 0.9, 0.1).astype(np.float32)
    frame = label_frame("water", mask, probs, table, NORTH_UP, CRS.from_epsg(32649))
    assert len(frame) == 1 and int(frame["n_chips"].iloc[0]) == mask.sum()
    union = frame.geometry.iloc[0]
    # A checkerboard: every chip its own part, touching its neighbours at corners only.
    assert union.geom_type == "MultiPolygon" and len(union.geoms) == mask.sum()
    assert frame["area_m2"].iloc[0] == pytest.approx(mask.sum() * (256 * 3.0) ** 2, rel=1e-12)


def test_label_frame_keeps_its_schema():
    table = grid_table(50, 50, 10, 8, "shift")
    mask = np.random.default_rng(2).random(len(table)) < 0.6
    probs = np.random.default_rng(3).random(len(table)).astype(np.float32)
    crs = CRS.from_epsg(32649)
    frame = label_frame("cloudy", mask, probs, table, NORTH_UP, crs)
    assert list(frame.columns) == [f.name for f in LABEL_FIELDS] + ["geometry"]
    numeric = [f.name for f in LABEL_FIELDS if f.dtype != "str"]
    assert [frame[c].dtype for c in numeric] == [np.dtype(f.dtype) for f in LABEL_FIELDS if f.dtype != "str"]
    assert pd.api.types.is_string_dtype(frame["label"]) and frame["label"].iloc[0] == "cloudy"
    assert frame.geometry.iloc[0].geom_type == "MultiPolygon"
    want = shapely.union_all(footprints(table, NORTH_UP)[mask])
    assert shapely.equals(frame.geometry.iloc[0], want)
    assert frame["area_m2"].iloc[0] == pytest.approx(want.area, rel=1e-12)
    assert frame["mean_prob"].iloc[0] == pytest.approx(float(probs[mask].mean()))
    empty = label_frame("cloudy", np.zeros(len(table), bool), probs, table, NORTH_UP, crs)
    assert len(empty) == 0 and list(empty.columns) == list(frame.columns)
    assert [empty[c].dtype for c in numeric] == [frame[c].dtype for c in numeric]
