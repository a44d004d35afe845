"""Fixtures for the QGIS-facing outputs: styled GeoPackages, and PyQGIS run as a subprocess.

PyQGIS lives in Debian's ``/usr/bin/python3`` (``python3-qgis``), not in the
project's virtual environment, so :func:`run_qgis_check` runs
``tests/qgis_check.py`` there and parses its JSON report.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS

from scenetag.outputs_schema.records import ChipTable
from scenetag.outputs_schema.run_record import RunRecord
from scenetag.outputs_schema.schema import JSON, JSON_LIST, RUN_FIELDS, SCHEMA_VERSION

ROOT = Path(__file__).resolve().parents[1]
QGIS_PYTHON = os.environ.get("SCENETAG_QGIS_PYTHON", "/usr/bin/python3")
QGIS_CHECK = ROOT / "tests" / "qgis_check.py"


@functools.lru_cache(maxsize=1)
def qgis_unavailable() -> str | None:
    """Why PyQGIS cannot be used here, or None when it can."""
    if not Path(QGIS_PYTHON).exists():
        return f"{QGIS_PYTHON} does not exist (install Debian's python3-qgis)"
    try:
        proc = subprocess.run([QGIS_PYTHON, "-c", "import qgis.core"], capture_output=True, text=True,
                              timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{QGIS_PYTHON} -c 'import qgis.core' failed: {exc}"
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return f"PyQGIS is not installed for {QGIS_PYTHON} ({last}): apt-get install python3-qgis qgis-providers"
    return None


def run_qgis_check(gpkg: Path, *args: str, timeout: float = 120) -> dict:
    """Run ``tests/qgis_check.py`` on ``gpkg`` under PyQGIS; its JSON report."""
    reason = qgis_unavailable()
    if reason:
        pytest.skip(reason)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["QT_QPA_PLATFORM"] = "offscreen"
    env.setdefault("XDG_RUNTIME_DIR", str(Path(gpkg).parent))
    proc = subprocess.run([QGIS_PYTHON, str(QGIS_CHECK), str(gpkg), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=str(Path(gpkg).parent))
    assert proc.returncode == 0, f"qgis_check failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout)


def fake_run(**overrides: Any) -> RunRecord:
    """A run record with every declared field: ``overrides``, else a placeholder of the field's type."""
    placeholder = {"str": "x", "int32": 0, "float64": 0.0}
    run: dict[str, Any] = {f.name: {} if f.dtype == JSON else [] if f.dtype == JSON_LIST else placeholder[f.dtype]
                           for f in RUN_FIELDS}
    run.update(run_id="run-test", schema_version=SCHEMA_VERSION, status="ok", scene_path="/data/scene.tif",
               software="scenetag test", model_name="tiny-test")
    run.update(overrides)
    return RunRecord(**run)


def synthetic_table(n_rows: int, n_cols: int, n_labels: int, chip: int = 64, keep: float = 0.7,
                    seed: int = 0) -> ChipTable:
    """A table over an ``n_rows`` x ``n_cols`` grid with about ``keep`` of the positions classified."""
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(n_rows):
        for c in range(n_cols):
            if rng.random() < keep:
                rows.append((r, c, c * chip, r * chip, chip, chip, 1.0))
    if not rows:
        rows.append((0, 0, 0, 0, chip, chip, 1.0))
    probs = rng.random((len(rows), n_labels)).astype(np.float32)
    return ChipTable.from_rows(rows, probs)


def write_synthetic_gpkg(out: Path, spec, n_rows: int = 3, n_cols: int = 4, seed: int = 0,
                         crs: str = "EPSG:32633") -> Path:
    """A GeoPackage from the real writer (which stores the styles) over a synthetic table."""
    from scenetag.outputs_schema.geopackage import write_geopackage

    table = synthetic_table(n_rows, n_cols, spec.n_labels, seed=seed)
    write_geopackage(out, table=table, spec=spec, scene_id="synthetic",
                     transform=Affine(10.0, 0, 500000.0, 0, -10.0, 4000000.0),
                     crs=CRS.from_user_input(crs), run=fake_run())
    return out

