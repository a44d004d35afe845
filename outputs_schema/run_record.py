"""The provenance of a run as a typed value, generated from the ``runs`` declaration, and its reader.

:class:`RunRecord` is a frozen dataclass with one attribute per field of
:data:`~scenetag.outputs_schema.schema.RUN_FIELDS`, in order, so a new field is
one line in that declaration.  Attribute types follow the declared dtype:
``str``, ``int`` (``int32``), ``float`` (``float64``), ``dict`` (:data:`JSON`,
stored as canonical JSON text, keys sorted) and ``list`` of ``str``
(:data:`JSON_LIST`, stored as JSON text).  Values are checked and
normalised when the record is made (numpy scalars become Python numbers).

:func:`read_run_record` is the one reader of what a GeoPackage records about
the run that wrote it: the last row of its ``runs`` table.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import numbers
import os
import sqlite3
from pathlib import Path
from typing import Any, Mapping

from scenetag.errors import OutputExistsError
from scenetag.outputs_schema.db import connect_read_only
from scenetag.outputs_schema.schema import JSON, JSON_LIST, RUN_FIELDS, RUNS_LAYER, Field

log = logging.getLogger(__name__)

_PY_TYPES: dict[str, type] = {"str": str, "int32": int, "float64": float, JSON: dict, JSON_LIST: list}
#: Fields stored as JSON text.
_AS_JSON = (JSON, JSON_LIST)


def _normalised(f: Field, value: Any) -> Any:
    """``value`` as the Python type of ``f``; TypeError naming the field otherwise."""
    if f.dtype == JSON:
        if not isinstance(value, Mapping):
            raise TypeError(f"run field {f.name} must be a mapping (stored as JSON), got {type(value).__name__}")
        value = dict(value)
        try:
            json.dumps(value, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"run field {f.name} cannot be stored as JSON: {exc}") from exc
        return value
    if f.dtype == JSON_LIST:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) \
                or not all(isinstance(v, str) for v in value):
            raise TypeError(f"run field {f.name} must be a list of str (stored as JSON), got {value!r}")
        return list(value)
    if f.dtype == "str":
        if not isinstance(value, str):
            raise TypeError(f"run field {f.name} must be a str, got {type(value).__name__}")
        return value
    if f.dtype == "int32":
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"run field {f.name} must be an integer, got {value!r}")
        return int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"run field {f.name} must be a number, got {value!r}")
    return float(value)


class _RunRecordMethods:
    """What every :class:`RunRecord` can do besides holding its fields."""

    def __post_init__(self) -> None:
        for f in RUN_FIELDS:
            object.__setattr__(self, f.name, _normalised(f, getattr(self, f.name)))

    def to_dict(self) -> dict[str, Any]:
        """The fields as Python values, in declaration order (JSON fields as dicts)."""
        return {f.name: getattr(self, f.name) for f in RUN_FIELDS}

    def to_row(self) -> dict[str, Any]:
        """The ``runs`` row as written: JSON fields as canonical JSON text, the rest as they are."""
        return {f.name: json.dumps(getattr(self, f.name), sort_keys=True) if f.dtype in _AS_JSON
                else getattr(self, f.name) for f in RUN_FIELDS}

    def replace(self, **changes: Any) -> "RunRecord":
        """A copy with ``changes`` applied (and checked)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "RunRecord":
        """The record of a ``runs`` row as read back (JSON text decoded; NULL text as ``""``).

        Raises ValueError when a declared field is missing or a JSON field does not decode.
        """
        missing = [f.name for f in RUN_FIELDS if f.name not in row]
        if missing:
            raise ValueError(f"runs row lacks the fields {missing}")
        values: dict[str, Any] = {}
        for f in RUN_FIELDS:
            value = row[f.name]
            if f.dtype in _AS_JSON:
                value = json.loads(value) if value else _PY_TYPES[f.dtype]()
            elif f.dtype == "str" and value is None:
                value = ""
            values[f.name] = value
        try:
            return cls(**values)
        except TypeError as exc:
            raise ValueError(f"runs row does not fit the declaration: {exc}") from exc


RunRecord = dataclasses.make_dataclass(
    "RunRecord",
    # Dicts cannot be hashed; JSON fields still take part in equality.
    [(f.name, _PY_TYPES[f.dtype], dataclasses.field(hash=f.dtype not in _AS_JSON, metadata={"doc": f.doc}))
     for f in RUN_FIELDS],
    bases=(_RunRecordMethods,),
    frozen=True,
)
RunRecord.__module__ = __name__  # so that pickle (Dask) finds it here
RunRecord.__doc__ = ("Provenance of one run, the ``runs`` row of a GeoPackage: one attribute per field of "
                     ":data:`~scenetag.outputs_schema.schema.RUN_FIELDS`.")


def read_run_record(path: str | os.PathLike) -> "RunRecord | None":
    """The record of the last run in the GeoPackage at ``path``; None when there is no file or no run.

    Raises :class:`OutputExistsError` when the file exists but is no scenetag
    GeoPackage of this schema (not SQLite, no ``runs`` table, other fields).
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        con = connect_read_only(path)
        try:
            # Checked first: SQLite reads a double-quoted name that is no column as a string literal.
            have = {r[1] for r in con.execute(f'PRAGMA table_info("{RUNS_LAYER}")')}
            if not have:
                raise ValueError(f"it has no {RUNS_LAYER!r} table")
            missing = [f.name for f in RUN_FIELDS if f.name not in have and f.since == 1]
            if missing:
                raise ValueError(f"its {RUNS_LAYER!r} table lacks the fields {missing}")
            # A field added by a later schema reads as empty from an older file (whose
            # signature then differs, so it is out of date, not foreign).
            columns = ", ".join(f'"{f.name}"' if f.name in have else f"NULL AS \"{f.name}\"" for f in RUN_FIELDS)
            con.row_factory = sqlite3.Row
            row = con.execute(f'SELECT {columns} FROM "{RUNS_LAYER}" ORDER BY rowid DESC LIMIT 1').fetchone()
        finally:
            con.close()
        record = None if row is None else RunRecord.from_row(dict(row))
    except (sqlite3.Error, ValueError) as exc:
        raise OutputExistsError(
            f"output {str(path)!r} exists and is not a scenetag GeoPackage ({exc}): move it away, "
            "or replace it (--force)"
        ) from exc
    log.debug("read the run record of %s: %s", path, "none" if record is None else record.run_id)
    return record
