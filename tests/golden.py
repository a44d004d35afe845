"""A GeoPackage reduced to what must not change across refactors, and its comparison.

:func:`summarise` turns a scenetag GeoPackage into plain JSON: the layers and
their geometry types, every ``chips`` field (probabilities at full float32
precision), each label layer's fields and geometry (area and bounds), and the
``runs`` fields that do not vary from one run to the next (not times, ids or
the scene's absolute path).  :func:`assert_same` compares two summaries,
probabilities within 1e-6.

``python -m tests.golden`` rewrites ``tests/golden/*.json`` from the current
code: do that only for a deliberate change of output, and say so in the commit.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

GOLDEN = Path(__file__).with_name("golden")

#: ``runs`` fields that differ between two runs of the same scene (times, ids, paths).
VOLATILE_RUN_FIELDS = {"run_id", "started_at", "finished_at", "scene_path", "seconds_total", "seconds_read",
                       "seconds_infer", "seconds_write"}
#: Options recorded in ``runs.options`` that depend on the machine or bound the run, not on the result.
VOLATILE_OPTIONS = {"batch_size", "readers", "reader", "max_chips", "resample_max_factor"}
TOLERANCE = 1e-6

#: The cases the golden files hold: name → (scene file, CLI options).  Bands put the
#: real scenes in the default (RGB) model's order where colour interpretation misleads.
CASES: dict[str, tuple[str, tuple[str, ...]]] = {
    "borneo": ("planetscope_borneo_3m_analytic.tif", ("--bands", "3,2,1")),
    "borneo_overlap_pad": ("planetscope_borneo_3m_analytic.tif",
                           ("--bands", "3,2,1", "--overlap", "0.5", "--edge", "pad", "--min-valid", "0.2")),
    "planetscope_4326": ("planetscope_3m_epsg4326.tif", ("--bands", "3,2,1")),
    "landsat7": ("landsat7_rgb_byte.tif", ()),
    "landsat7_skip_4326": ("landsat7_rgb_byte.tif", ("--edge", "skip", "--stride", "128", "--to-crs", "EPSG:4326")),
    "landsat8_rgb16": ("landsat8_rgb16.tif", ()),
    "pucallpa": ("landsat_pucallpa_2020_epsg4326.tif", ("--bands", "3,4,2")),
    "drone_alpha": ("drone_rgba_alpha.tif", ()),
    "all_nodata": ("all_nodata.tif", ("--bands", "3,2,1")),
}


def _plain(value):
    """numpy scalars and NaN as JSON-friendly values."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def summarise(path: str | Path) -> dict:
    """The parts of a scenetag GeoPackage that a refactor must keep."""
    import pyogrio

    layers = {name: geom for name, geom in pyogrio.list_layers(path)}
    out: dict = {"layers": layers}
    chips = pyogrio.read_dataframe(path, layer="chips")
    out["chips"] = {
        "columns": list(chips.columns),
        "crs": chips.crs.to_wkt() if chips.crs else None,
        "values": {c: [_plain(v) for v in chips[c]] for c in chips.columns if c != "geometry"},
        "bounds": [[round(b, 6) for b in g.bounds] for g in chips.geometry],
    }
    out["labels"] = {}
    for name in layers:
        if not name.startswith("label_"):
            continue
        frame = pyogrio.read_dataframe(path, layer=name)
        out["labels"][name] = {
            "columns": list(frame.columns),
            "rows": [{c: _plain(v) for c, v in row.items() if c != "geometry"} for _, row in frame.iterrows()],
            "geometry": [{"area": g.area, "bounds": [round(b, 6) for b in g.bounds]} for g in frame.geometry],
        }
    runs = pyogrio.read_dataframe(path, layer="runs")
    row = runs.iloc[-1].to_dict()
    options = json.loads(row["options"])
    for key in VOLATILE_OPTIONS:
        options.pop(key, None)
    row["options"] = options
    row["model_spec"] = json.loads(row["model_spec"])
    row["thresholds"] = json.loads(row["thresholds"])
    out["runs"] = {"columns": list(runs.columns),
                   "row": {k: _plain(v) for k, v in row.items() if k not in VOLATILE_RUN_FIELDS}}
    return out


def _close(a, b, where: str) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        assert sorted(a) == sorted(b), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            _close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), f"{where}: {len(a)} items != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert a is not None and b is not None, f"{where}: {a!r} != {b!r}"
        assert abs(a - b) <= TOLERANCE * max(1.0, abs(a), abs(b)), f"{where}: {a!r} != {b!r}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same(actual: dict, expected: dict, name: str = "output") -> None:
    """Fail with the first difference between two summaries (floats within 1e-6, relative above 1)."""
    _close(actual, expected, name)


def golden_path(case: str) -> Path:
    return GOLDEN / f"{case}.json"


def run_case(case: str, scenes: Path, out: Path) -> Path:
    """Classify one case's scene through the CLI into ``out``; returns the GeoPackage."""
    from click.testing import CliRunner

    from cli import main

    scene, options = CASES[case]
    # ONNX Runtime, which wrote the summaries: `auto` takes OpenVINO on the CPU where it is
    # installed, whose float rounding differs by about 1e-6 (tests/test_openvino_backend.py
    # holds it to ONNX Runtime's probabilities within 1e-5).
    result = CliRunner().invoke(main, ["-q", "run", str(scenes / scene), "-o", str(out), "--backend", "onnx",
                                       *options],
                                catch_exceptions=False)
    if result.exit_code != 0:
        raise AssertionError(f"{case}: exit {result.exit_code}: {result.output}")
    return out


def main(argv: list[str]) -> int:
    import tempfile

    from tests.conftest import SCENES

    GOLDEN.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for case in argv or CASES:
            gpkg = run_case(case, SCENES, Path(tmp) / f"{case}.gpkg")
            golden_path(case).write_text(json.dumps(summarise(gpkg), indent=1, sort_keys=True) + "\n")
            print(f"wrote {golden_path(case)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
