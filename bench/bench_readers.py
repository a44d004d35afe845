"""Reader benchmark: milliseconds per chip for each way of reading, in one process.

    python bench/bench_readers.py [--chips DIR] [--repeat 2] [--runs 40]

Builds the real-derived mosaic scene of ``bench/bench_gpu.py`` (Planet Amazon
chips, tiled 256, DEFLATE, nodata 0) and a copy without nodata, then times on
one thread, over the same cells:

* ``read``: one chip per call (a run of one, the thread path);
* ``read_run, GDAL mask``: 32 chips per call, the mask read through GDAL
  (the scene's mask mode set to ``gdal``);
* ``read_run``: 32 chips per call, the mask as the scene's mask mode says
  (derived from the pixels for nodata; not read at all without a mask).

What one process does per chip bounds what N reader processes do together.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import rasterio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.scenes import CACHE, DATA  # noqa: E402
from scenetag.atomic import atomic_path  # noqa: E402


def without_nodata(scene: Path) -> Path:
    """A copy of ``scene`` with no nodata value (so no mask at all), built once."""
    dst_path = scene.with_name(scene.stem + "_nonodata.tif")
    if not dst_path.exists():
        with atomic_path(dst_path, replace=True) as tmp:  # a cache of deterministic content
            shutil.copyfile(scene, tmp)  # the same blocks, not decoded
            with rasterio.open(tmp, "r+") as dst:
                dst.nodata = None
    return dst_path


def main() -> None:
    from bench.scenes import build_scene, load_chips
    from scenetag.jobs.options import RunOptions
    from scenetag.jobs.planning import plan_scene
    from scenetag.model.default import default_model_path
    from scenetag.model.backends.onnx_backend import read_onnx_spec
    from scenetag.config import gdal_cachemax_mb
    from scenetag.tiler.feed import runs_of
    from scenetag.tiler.scene import MaskMode

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chips", type=Path, default=DATA / "chips" / "planet_amazon" / "images")
    ap.add_argument("--work", type=Path, default=CACHE / "readers")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--runs", type=int, default=40, help="runs of 32 chips timed per method")
    args = ap.parse_args()
    if not args.chips.is_dir():
        raise SystemExit(f"no chips at {args.chips}: the Planet chips live in ../shared/data (see its README)")

    scene = build_scene(load_chips(args.chips, 600), args.work, args.repeat)
    spec = read_onnx_spec(default_model_path())
    print(f"{'scene':<22} {'method':<24} ms/chip")
    for path in (scene, without_nodata(scene)):
        plan = plan_scene(path, spec, RunOptions())
        runs = runs_of(list(plan.grid))[:args.runs]
        cells = [c for r in runs for c in r]
        gdal_plan = replace(plan, info=replace(plan.info, mask_mode=MaskMode.GDAL))
        with rasterio.Env(GDAL_CACHEMAX=gdal_cachemax_mb()), plan.reader() as reader, \
                gdal_plan.reader() as gdal_reader:
            results = {}
            t0 = time.perf_counter()
            for c in cells:
                reader.read(c)
            results["read (one chip)"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            for r in runs:
                gdal_reader.read_run(r)
            results["read_run, GDAL mask"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            for r in runs:
                reader.read_run(r)
            results[f"read_run ({plan.info.mask_mode.value})"] = time.perf_counter() - t0
        base = results["read (one chip)"]
        for name, seconds in results.items():
            print(f"{path.name:<22} {name:<24} {1000 * seconds / len(cells):6.2f}   "
                  f"({base / seconds:.1f}x one-chip reads)")


if __name__ == "__main__":
    main()
