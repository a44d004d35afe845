"""QGIS styles stored in the GeoPackage (``layer_styles``).  Filled in by issue 5."""
