"""Scene-job throughput benchmark: model-only vs end-to-end vs a naive baseline.

Builds (once, cached under bench/_data/) a large scene from a real one: the
Borneo PlanetScope scene (512x512, 4 x uint16, 73% nodata) repeated 16x16
times into an 8192x8192 tiled (256x256), DEFLATE GeoTIFF with a geotransform
that places each copy beside the last.  Then, in one run, on that scene and
one model, each in a fresh subprocess so peak RSS is its own:

* model-only: ONNX Runtime on batches already in memory (chips/s);
* end-to-end: ``run_scene`` (chips classified per second, scene Mpx/s);
* naive: a plain loop of rasterio window reads -> ORT -> one GeoPackage
  through geopandas, classifying every chip, no skipping, no overlap.

Usage: python bench/bench_scene.py [--model PATH] [--size 8192] [--batch-size 32]
Numbers on a shared, noisy machine: compare the ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.scenes import CACHE, DATA, bench_model, repeat_scene  # noqa: E402

BASE = DATA / "scenes" / "planetscope_borneo_3m_analytic.tif"
BANDS = (3, 2, 1)


def build_scene(size: int) -> Path:
    """The large scene, built once from the real Borneo scene."""
    import rasterio

    out = CACHE / f"borneo_x{size}.tif"
    if out.exists():
        return out
    if not BASE.exists():
        sys.exit(f"benchmark needs the real scene {BASE} (shared data absent)")
    CACHE.mkdir(parents=True, exist_ok=True)
    with rasterio.open(BASE) as src:
        reps = size // src.height
    return repeat_scene(BASE, out, reps)


# -- the three measurements, each run in its own process -------------------------------
def measure_model_only(scene: str, model: str, batch_size: int) -> dict:
    import numpy as np

    from scenetag.jobs.options import RunOptions
    from scenetag.jobs.planning import plan_scene
    from scenetag.model.backends import create_predictor

    pred = create_predictor(model)
    batch_size = batch_size or pred.batch_size
    plan = plan_scene(scene, pred.spec, RunOptions(bands=BANDS))
    chips = []
    with plan.reader() as reader:
        for cell in plan.grid:
            chips.extend(reader.read(cell).pixels)
            if len(chips) >= 4 * batch_size:
                break
    batch = np.stack(chips[:batch_size])
    pred.predict(batch)  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 10 or n < 2 * batch_size:
        pred.predict(batch)
        n += len(batch)
    return {"chips_per_s": n / (time.perf_counter() - t0), "batch_size": batch_size}


def measure_run(scene: str, model: str, batch_size: int, out: str) -> dict:
    from scenetag.jobs.options import RunOptions
    from scenetag.jobs.runner import run_scene
    from scenetag.model.backends import create_predictor

    pred = create_predictor(model)
    t0 = time.perf_counter()
    res = run_scene(scene, out, pred, RunOptions(bands=BANDS, batch_size=batch_size or None), overwrite=True)
    dt = time.perf_counter() - t0
    return {"seconds": dt, "classified": res.n_chips_classified, "skipped": res.n_chips_skipped_nodata,
            "chips_per_s": res.n_chips_classified / dt, "timings": res.timings}


def measure_naive(scene: str, model: str, batch_size: int, out: str) -> dict:
    """Window reads -> ORT -> geopandas, every chip, one at a time through the loop."""
    import geopandas as gpd
    import numpy as np
    import onnxruntime as ort
    import rasterio
    from rasterio.windows import Window, bounds
    from shapely.geometry import box

    from scenetag.model.backends.onnx_backend import read_onnx_spec

    spec = read_onnx_spec(model)
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    mean = np.asarray(spec.mean, np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(spec.std, np.float32).reshape(1, -1, 1, 1)
    t0 = time.perf_counter()
    records = []
    with rasterio.open(scene) as src:
        sample = src.read(list(BANDS), out_shape=(3, 1024, 1024), masked=True)
        lo = [float(np.percentile(b.compressed(), 2)) for b in sample]
        hi = [float(np.percentile(b.compressed(), 98)) for b in sample]
        lo_a = np.asarray(lo, np.float32).reshape(-1, 1, 1)
        hi_a = np.asarray(hi, np.float32).reshape(-1, 1, 1)
        c = spec.chip_size
        for y in range(0, src.height - c + 1, c):
            for x in range(0, src.width - c + 1, c):
                w = Window(x, y, c, c)
                data = src.read(list(BANDS), window=w).astype(np.float32)
                data = np.clip((data - lo_a) / (hi_a - lo_a) * 255, 0, 255).round()
                xin = ((data[None] / 255.0) - mean) / std
                (p,) = sess.run(None, {name: xin.astype(np.float32)})
                rec = {"row": y // c, "col": x // c}
                rec.update({f"p_{lab}": float(v) for lab, v in zip(spec.labels, p[0])})
                rec["geometry"] = box(*bounds(w, src.transform))
                records.append(rec)
        crs = src.crs
    gpd.GeoDataFrame(records, crs=crs).to_file(out, layer="chips", driver="GPKG", engine="pyogrio")
    dt = time.perf_counter() - t0
    return {"seconds": dt, "classified": len(records), "chips_per_s": len(records) / dt}


def child(kind: str, scene: str, model: str, batch_size: int, out: str) -> None:
    fn = {"model": lambda: measure_model_only(scene, model, batch_size),
          "run": lambda: measure_run(scene, model, batch_size, out),
          "naive": lambda: measure_naive(scene, model, batch_size, out)}[kind]
    result = fn()
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def spawn(kind: str, scene: Path, model: Path, batch_size: int) -> dict:
    out = CACHE / f"bench_{kind}.gpkg"
    if out.exists():
        out.unlink()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, __file__, "--child", kind, "--scene", str(scene),
                           "--model", str(model), "--batch-size", str(batch_size), "--out", str(out)],
                          capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"{kind} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--batch-size", type=int, default=0, help="default: the backend's (8 on the CPU)")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--rss-sizes", default="4096,16384",
                    help="also run `run` on scenes of these sizes and compare peak RSS ('' to skip)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--scene", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.scene, str(args.model), args.batch_size, args.out)
        return
    t0 = time.perf_counter()
    scene = build_scene(args.size)
    model = args.model or bench_model(chip=256, resolution_m=3.0)[0]
    print(f"scene: {scene.name}, {args.size}x{args.size}, Borneo PlanetScope 512x512 repeated "
          f"{args.size // 512}x{args.size // 512}, tiled 256, DEFLATE (built in {time.perf_counter() - t0:.0f} s or cached)")
    print(f"model: {model}  batch size {args.batch_size or 'backend default'}  cores {os.cpu_count()}")
    mpx = args.size * args.size / 1e6
    m = spawn("model", scene, model, args.batch_size)
    print(f"model-only      : {m['chips_per_s']:8.1f} chips/s (batch {m['batch_size']})                     peak RSS {m['peak_rss_mb']:7.0f} MB")
    r = spawn("run", scene, model, args.batch_size)
    print(f"end-to-end run  : {r['chips_per_s']:8.1f} chips/s  {mpx / r['seconds']:6.2f} scene Mpx/s  "
          f"peak RSS {r['peak_rss_mb']:7.0f} MB  ({r['classified']} classified, {r['skipped']} skipped, "
          f"{r['seconds']:.1f} s; read {r['timings']['read']:.1f} s over readers, infer {r['timings']['infer']:.1f} s, "
          f"write {r['timings']['write']:.1f} s)")
    print(f"run / model-only: {r['chips_per_s'] / m['chips_per_s']:.2f}")
    if not args.skip_naive:
        n = spawn("naive", scene, model, args.batch_size)
        print(f"naive baseline  : {n['chips_per_s']:8.1f} chips/s  {mpx / n['seconds']:6.2f} scene Mpx/s  "
              f"peak RSS {n['peak_rss_mb']:7.0f} MB  ({n['classified']} classified, {n['seconds']:.1f} s)")
        print(f"speed-up of run over naive, scene Mpx/s: {n['seconds'] / r['seconds']:.2f}x")
    sizes = [int(v) for v in args.rss_sizes.split(",") if v.strip()]
    if sizes:
        rss = {}
        for size in sizes:
            rr = spawn("run", build_scene(size), model, args.batch_size)
            rss[size] = rr["peak_rss_mb"]
            print(f"run on {size}x{size}: peak RSS {rr['peak_rss_mb']:7.0f} MB, {rr['classified']} classified, "
                  f"{rr['chips_per_s']:.1f} chips/s")
        lo, hi = min(sizes), max(sizes)
        print(f"peak RSS {hi}^2 / {lo}^2 ({(hi / lo) ** 2:.0f}x the pixels): {rss[hi] / rss[lo]:.2f}")


if __name__ == "__main__":
    main()
