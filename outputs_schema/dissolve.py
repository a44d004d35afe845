"""Exact, fast dissolve of axis-aligned chip windows into one MultiPolygon.

Chip windows are integer rectangles in pixel space.  Their union is exactly
the union of the cells of the rectilinear lattice cut by the windows' own
edges, so the dissolve is done as a raster problem: mark the covered lattice
cells, polygonize them (GDAL, 4-connected, so cells touching only at a corner
stay separate polygons, as in a vector union), and map the lattice vertices
back to pixel and then CRS coordinates.  No floating-point overlay is
involved, and the cost is that of a raster of (unique x edges) by (unique y
edges) cells instead of thousands of polygon unions.
"""

from __future__ import annotations

import itertools
import logging

import numpy as np
import shapely
from affine import Affine
from rasterio import features

log = logging.getLogger(__name__)

#: Largest lattice (in cells) dissolved as a raster; larger ones (windows on no
#: regular grid) fall back to a vector union in pixel space: exact, but slow.
MAX_LATTICE_CELLS = 1 << 24


def _edges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return np.unique(np.concatenate([lo, hi]))


def _cover(xs: np.ndarray, ys: np.ndarray,
           x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray) -> np.ndarray:
    """Covered lattice cells (uint8), from a 2-D difference array of the windows."""
    i0, i1 = np.searchsorted(xs, x0), np.searchsorted(xs, x1)
    j0, j1 = np.searchsorted(ys, y0), np.searchsorted(ys, y1)
    # +1 at each window's first cell, -1 just past its right and bottom edges
    # and +1 past its bottom-right corner: the 2-D cumulative sum then counts
    # the windows covering each cell.
    diff = np.zeros((len(ys), len(xs)), np.int32)
    np.add.at(diff, (j0, i0), 1)
    np.add.at(diff, (j0, i1), -1)
    np.add.at(diff, (j1, i0), -1)
    np.add.at(diff, (j1, i1), 1)
    count = diff.cumsum(axis=0, dtype=np.int32).cumsum(axis=1, dtype=np.int32)[:-1, :-1]
    return (count > 0).astype(np.uint8)


def dissolve_windows(
    x_off: np.ndarray, y_off: np.ndarray, width: np.ndarray, height: np.ndarray,
    transform: Affine,
) -> shapely.MultiPolygon:
    """The union of pixel windows as one MultiPolygon in the CRS of ``transform``.

    The union is exact in pixel space, and its vertices are mapped through
    ``transform`` as :func:`~scenetag.outputs_schema.geopackage.footprints` maps chip
    corners, so the result equals (``shapely.equals``, and in area)
    ``shapely.union_all`` of the footprints under any axis-aligned affine.
    Under a rotated or sheared affine it is the exact image of the pixel-space
    union, where ``union_all`` of the rotated footprints can differ from it by
    round-off (near-collinear extra vertices, slivers of ~1e-9 square units).
    Cells touching only at a corner are separate polygons, holes are kept,
    and rings are oriented as ``footprints`` orients them (shells
    counter-clockwise).  An empty selection gives an empty MultiPolygon.
    """
    x0 = np.asarray(x_off, np.int64)
    y0 = np.asarray(y_off, np.int64)
    x1 = x0 + np.asarray(width, np.int64)
    y1 = y0 + np.asarray(height, np.int64)
    keep = (x1 > x0) & (y1 > y0)  # a zero-area window covers nothing
    x0, y0, x1, y1 = x0[keep], y0[keep], x1[keep], y1[keep]
    if len(x0) == 0:
        return shapely.MultiPolygon()
    xs, ys = _edges(x0, x1), _edges(y0, y1)
    n_cells = (len(xs) - 1) * (len(ys) - 1)
    if n_cells > MAX_LATTICE_CELLS:
        log.debug("lattice of %d cells is too large: dissolving %d windows as vectors", n_cells, len(x0))
        union = shapely.union_all(shapely.box(x0, y0, x1, y1))
        pixel = shapely.MultiPolygon([g for g in shapely.get_parts(union) if g.geom_type == "Polygon"])
        return shapely.orient_polygons(shapely.transform(pixel, lambda xy: np.stack(transform @ (xy[:, 0], xy[:, 1]), axis=1)))
    covered = _cover(xs, ys, x0, y0, x1, y1)
    return shapely.orient_polygons(shapely.multipolygons(_polygonize(covered, xs, ys, transform)))


def _polygonize(covered: np.ndarray, xs: np.ndarray, ys: np.ndarray, transform: Affine) -> np.ndarray:
    """Polygons of the covered lattice cells, with vertices mapped through the edges and ``transform``."""
    coords: list[list[tuple[float, float]]] = []
    ring_poly: list[int] = []
    for n_polys, (geom, _) in enumerate(features.shapes(covered, mask=covered.astype(bool), connectivity=4)):
        coords.extend(geom["coordinates"])
        ring_poly.extend([n_polys] * len(geom["coordinates"]))
    lengths = np.fromiter((len(r) for r in coords), np.intp, len(coords))
    flat = np.asarray(list(itertools.chain.from_iterable(coords)), np.float64).reshape(-1, 2)
    # Vertices are lattice indices (integers): look up the pixel edges, then map them as footprints() does.
    px = xs[np.rint(flat[:, 0]).astype(np.intp)]
    py = ys[np.rint(flat[:, 1]).astype(np.intp)]
    world = np.stack(transform @ (px, py), axis=1)
    rings = shapely.linearrings(world, indices=np.repeat(np.arange(len(coords)), lengths))
    # The first ring of each polygon is its shell; the others are its holes.
    return shapely.polygons(rings, indices=np.asarray(ring_poly, np.intp))
