"""``area_m2`` of the label layers: square metres in every CRS, geodesic for a geographic scene."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import shapely
from pyproj import CRS as ProjCRS
from pyproj import Transformer
from rasterio.crs import CRS

from scenetag.outputs_schema.area import area_m2
from scenetag.outputs_schema.geopackage import label_frame
from scenetag.outputs_schema.records import ChipTable
from scenetag.tiler.grid import Grid
from tests.conftest import real_scene


def grid_table(width: int, height: int, chip: int) -> ChipTable:
    cells = list(Grid(width, height, chip, chip, "shift"))
    rows = [(c.row, c.col, c.col_off, c.row_off, c.width, c.height, 1.0) for c in cells]
    return ChipTable.from_rows(rows, np.full((len(rows), 1), 0.9, np.float32))


def equal_area_m2(geom: shapely.Geometry, crs: CRS) -> float:
    """An independent measure: the polygon in a Lambert azimuthal equal-area projection centred on it."""
    lon, lat = geom.centroid.x, geom.centroid.y
    laea = ProjCRS.from_proj4(f"+proj=laea +lat_0={lat} +lon_0={lon} +ellps=WGS84 +units=m")
    to = Transformer.from_crs(ProjCRS.from_wkt(crs.to_wkt()), laea, always_xy=True)
    dense = shapely.segmentize(geom, max_segment_length=abs(geom.bounds[2] - geom.bounds[0]) / 50)
    return shapely.transform(dense, lambda xy: np.stack(to.transform(xy[:, 0], xy[:, 1]), axis=1)).area


def test_geographic_scene_area_is_geodesic_square_metres():
    scene = real_scene("planetscope_3m_epsg4326.tif")
    with rasterio.open(scene) as src:
        transform, crs, width, height = src.transform, src.crs, src.width, src.height
    assert crs.is_geographic
    table = grid_table(width, height, 64)
    frame = label_frame("water", np.ones(len(table), bool), table.probs[:, 0], table, transform, crs)
    union = frame.geometry.iloc[0]
    got = frame["area_m2"].iloc[0]
    # The scene is ~3 m pixels: the footprint is about its width x height x 9 m², not ~1e-6 square degrees.
    assert got == pytest.approx(width * height * 9, rel=0.1)
    assert got == pytest.approx(equal_area_m2(union, crs), rel=1e-6)
    assert union.area < 1e-3  # what the field held before: square degrees


def test_projected_area_is_planar_in_metres_even_in_feet():
    box = shapely.Polygon([(0, 0), (100, 0), (100, 50), (0, 50)])
    assert area_m2(box, CRS.from_epsg(32649).to_wkt()) == 5000
    feet = CRS.from_epsg(2227)  # California zone 3, US survey feet
    assert area_m2(box, feet.to_wkt()) == pytest.approx(5000 * (1200 / 3937) ** 2, rel=1e-9)


def test_geodesic_area_subtracts_holes_and_sums_parts():
    wkt = CRS.from_epsg(4326).to_wkt()
    outer = shapely.box(10.0, 0.0, 10.01, 0.01)
    hole = shapely.box(10.004, 0.004, 10.006, 0.006)
    ring = shapely.orient_polygons(shapely.Polygon(outer.exterior, [hole.exterior]))
    other = shapely.orient_polygons(shapely.box(11.0, 0.0, 11.01, 0.01))
    whole = area_m2(shapely.orient_polygons(outer), wkt)
    assert area_m2(ring, wkt) == pytest.approx(whole * (1 - 0.04), rel=1e-4)
    assert area_m2(shapely.MultiPolygon([ring, other]), wkt) == pytest.approx(area_m2(ring, wkt) + whole, rel=1e-9)
