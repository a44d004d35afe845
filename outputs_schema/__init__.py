"""The outputs of a scene: the GeoPackage schema (declared once), its run record, and their writers.

:class:`SceneOutputs` owns a scene's output files (which, may they be written,
are they current, write them); :class:`RunRecord` is the typed ``runs`` row and
:func:`read_run_record` reads it back.
"""

from scenetag.outputs_schema.outputs import SceneFrame, SceneOutputs
from scenetag.outputs_schema.run_record import RunRecord, read_run_record
from scenetag.outputs_schema.schema import SCHEMA_VERSION, OutputSchema

__all__ = ["SCHEMA_VERSION", "OutputSchema", "RunRecord", "SceneFrame", "SceneOutputs", "read_run_record"]
