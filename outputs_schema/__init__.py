"""The GeoPackage schema, declared once, and its writer."""

from scenetag.outputs_schema.schema import SCHEMA_VERSION, OutputSchema

__all__ = ["SCHEMA_VERSION", "OutputSchema"]
