"""GeoPackage schema (version :data:`SCHEMA_VERSION`), declared once for writers and tests.

Layers:

``chips``
    One polygon per classified chip, in the scene's CRS.
``label_<name>``
    One MultiPolygon per label: the dissolved footprint of chips tagged with it.
``runs``
    One row per run with its provenance (no geometry).

Label names become column and layer names, so they are sanitised by
:func:`sanitize_names`: lower case ASCII letters, digits and ``_``, unique,
never starting with a digit and never longer than :data:`MAX_NAME`.  The
rules for one label (:func:`~scenetag.model.spec.column_stem`,
:func:`~scenetag.model.spec.tag_name`) live with the spec, which refuses
labels that would collide under them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from scenetag.model.spec import MAX_NAME, column_stem, tag_name

SCHEMA_VERSION = 3  # 2: runs.warnings; 3: label layers' area_m2 (was area), chips.shifted, chips.weather,
# top_label is the top land-cover label, runs.bands_used, runs.scene_source, runs.config, the stored QGIS project

CHIPS_LAYER = "chips"
RUNS_LAYER = "runs"
LABEL_LAYER_PREFIX = "label_"
PROB_PREFIX = "p_"


#: The ``dtype`` of a field stored as JSON text; in Python its value is a dict.
JSON = "json"
#: The ``dtype`` of a field stored as a JSON list of strings; in Python its value is a list of str.
JSON_LIST = "json_list"


@dataclass(frozen=True)
class Field:
    """One attribute field: name, dtype (a pandas/numpy dtype, or :data:`JSON`) and meaning."""

    name: str
    dtype: str
    doc: str
    #: The schema version that added the field: files of older versions lack it.
    since: int = 1

    @property
    def storage_dtype(self) -> str:
        """The pandas/numpy dtype of the column in the file (JSON is text)."""
        return "str" if self.dtype in (JSON, JSON_LIST) else self.dtype


#: Fixed fields of the ``chips`` layer, before the per-label probability columns.
CHIP_FIELDS: tuple[Field, ...] = (
    Field("scene_id", "str", "scene identifier (file stem)"),
    Field("row", "int32", "chip row in the grid"),
    Field("col", "int32", "chip column in the grid"),
    Field("x_off", "int32", "pixel column of the window read"),
    Field("y_off", "int32", "pixel row of the window read"),
    Field("width", "int32", "window width in scene pixels"),
    Field("height", "int32", "window height in scene pixels"),
    Field("shifted", "bool", "the window was moved back to end on the scene's edge (--edge shift), so it "
          "overlaps its neighbours; the styles draw it beneath them", since=3),
    Field("valid_fraction", "float32", "share of the chip's pixels inside the scene that are valid per GDAL's mask"),
    Field("tags", "str", "space-separated tags, as in Kaggle (see tag_names)"),
    Field("n_tags", "int32", "number of tags"),
    Field("top_label", "str", "land-cover label with the highest probability (labels outside the spec's "
          "exclusive groups, e.g. not weather; every label when the spec has no groups)"),
    Field("top_prob", "float32", "probability of top_label"),
    Field("weather", "str", "the chip's tag of the spec's exclusive group 'weather' (exactly one per chip); "
          "NULL when the spec has no such group", since=3),
)

#: Fields of each ``label_<name>`` layer.
LABEL_FIELDS: tuple[Field, ...] = (
    Field("label", "str", "label name as the model gives it"),
    Field("n_chips", "int32", "chips tagged with the label"),
    Field("area_m2", "float64", "area of the dissolved footprint in m², measured in the scene's CRS (planar in "
          "a projected CRS, geodesic on the ellipsoid in a geographic one), whatever --to-crs says", since=3),
    Field("mean_prob", "float32", "mean probability of the label over those chips"),
)

#: Fields of the ``runs`` table; :class:`~scenetag.outputs_schema.run_record.RunRecord` is made from them.
RUN_FIELDS: tuple[Field, ...] = (
    Field("run_id", "str", "unique id of the run"),
    Field("schema_version", "int32", "version of this schema"),
    Field("software", "str", "scenetag version"),
    Field("started_at", "str", "UTC start time, ISO 8601"),
    Field("finished_at", "str", "UTC end time, ISO 8601"),
    Field("status", "str", "ok, empty (nothing classified) or failed"),
    Field("reason", "str", "why the status is not ok"),
    Field("scene_path", "str", "absolute path of the scene"),
    Field("scene_sha256", "str", "sha256 of the scene file; of a remote scene, of its identity (see scene_source)"),
    Field("scene_crs", "str", "CRS of the scene, as authority code or WKT"),
    Field("model_name", "str", "model name from its spec"),
    Field("model_sha256", "str", "sha256 of the model file"),
    Field("model_spec", JSON, "the model spec"),
    Field("thresholds", JSON, "label -> threshold"),
    Field("options", JSON, "run options"),
    Field("signature", "str", "hash of scene, model, options and schema version"),
    Field("n_chips_total", "int32", "chips in the grid"),
    Field("n_chips_classified", "int32", "chips classified"),
    Field("n_chips_skipped_nodata", "int32", "chips skipped for too little valid area"),
    Field("n_chips_skipped_edge", "int32", "partial edge chips skipped by the edge policy"),
    Field("seconds_total", "float64", "wall time of the run"),
    Field("seconds_read", "float64", "time spent reading chips (summed over readers)"),
    Field("seconds_infer", "float64", "time spent in the model"),
    Field("seconds_write", "float64", "time spent writing the GeoPackage"),
    Field("warnings", JSON_LIST, "what the run found doubtful (e.g. a scene without contrast); [] when nothing",
          since=2),
    Field("bands_used", "str", "scene bands fed to the model, in its band order, and the evidence for them, "
          "e.g. '1,2,3 as red,green,blue (from the scene's colour tags: red, green, blue, undefined)'", since=3),
    Field("scene_source", JSON, "where the scene came from: its identity (kind: sha256 of the bytes, or the "
          "server's etag / size+last-modified, or a STAC item's stac; and what it was made from); for a STAC "
          "item its id, collection, datetime and the asset used, and why", since=3),
    Field("config", JSON, "the --config file that gave option defaults: path, sha256 and the options taken "
          "from it (by its keys); {} without one", since=3),
)


def sanitize_names(labels: Sequence[str], max_len: int = MAX_NAME) -> tuple[str, ...]:
    """Safe, unique SQL identifiers for ``labels``, in order.

    Non-ASCII letters are transliterated where possible; anything else that is
    not a letter, digit or ``_`` becomes ``_``.  Collisions get ``_2``, ``_3``...
    """
    out: list[str] = []
    seen: set[str] = set()
    for label in labels:
        name = column_stem(label, max_len)
        candidate, i = name, 2
        while candidate in seen:
            suffix = f"_{i}"
            candidate = name[: max_len - len(suffix)] + suffix
            i += 1
        seen.add(candidate)
        out.append(candidate)
    return tuple(out)


def tag_names(labels: Sequence[str]) -> tuple[str, ...]:
    """Labels as they appear in the space-separated ``tags`` field: whitespace becomes ``_``."""
    return tuple(tag_name(label) for label in labels)


@dataclass(frozen=True)
class OutputSchema:
    """The schema for one model's labels: layer and column names derived once."""

    labels: tuple[str, ...]

    @property
    def safe_names(self) -> tuple[str, ...]:
        return sanitize_names(self.labels)

    @property
    def prob_columns(self) -> tuple[str, ...]:
        """Probability column of each label in the ``chips`` layer."""
        return tuple(PROB_PREFIX + n for n in self.safe_names)

    @property
    def label_layers(self) -> tuple[str, ...]:
        """Layer name of each label's dissolved footprint."""
        return tuple(LABEL_LAYER_PREFIX + n for n in self.safe_names)

    @property
    def chip_columns(self) -> tuple[str, ...]:
        """All attribute columns of ``chips`` in order."""
        return tuple(f.name for f in CHIP_FIELDS) + self.prob_columns

    @property
    def layers(self) -> tuple[str, ...]:
        """Every layer the GeoPackage holds."""
        return (CHIPS_LAYER, *self.label_layers, RUNS_LAYER)
