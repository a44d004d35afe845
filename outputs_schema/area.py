"""The area of a footprint in square metres, whatever the scene's CRS.

A projected CRS measures the polygon in its plane, in its linear unit, which
is converted to metres (a CRS in US survey feet gives ft² otherwise).  A
geographic CRS has no plane: its square degrees are no area at all, so the
polygon is measured on the CRS's ellipsoid with :class:`pyproj.Geod` (exact
geodesic polygon area, Karney's algorithm).
"""

from __future__ import annotations

from functools import lru_cache

import shapely
from pyproj import CRS as ProjCRS
from pyproj import Geod


@lru_cache(maxsize=16)
def _measure(wkt: str) -> tuple[Geod | None, float]:
    """For a CRS: its ellipsoid's geodesic when geographic (else None), and its linear unit in metres."""
    crs = ProjCRS.from_wkt(wkt)
    if crs.is_geographic:
        return crs.get_geod(), 1.0
    unit = next((a.unit_conversion_factor for a in crs.axis_info if a.unit_conversion_factor), 1.0)
    return None, float(unit)


def area_m2(geom: shapely.Geometry, crs_wkt: str) -> float:
    """Area of ``geom`` (coordinates in the CRS of ``crs_wkt``) in m²: planar in a projected CRS,
    geodesic on the ellipsoid in a geographic one."""
    geod, unit = _measure(crs_wkt)
    if geod is None:
        return float(geom.area) * unit * unit
    # geometry_area_perimeter's area is signed by ring orientation; shells are counter-clockwise here.
    return abs(float(geod.geometry_area_perimeter(geom)[0]))
