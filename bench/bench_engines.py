"""Engines on the CPU: ONNX Runtime fp32, OpenVINO fp32 and OpenVINO INT8, model-only and end to end, with accuracy.

    python bench/bench_engines.py [--int8 MODEL_INT8] [--rounds 2] [--seconds 6]

In one run, each measurement in a fresh subprocess, rounds interleaved (the
median is printed):

* model-only: chips/s of ``predictor.predict`` on batches of real Planet chips
  already in memory (the backend's batch size);
* end to end: chips classified per second by ``run_scene`` on the fully valid
  scene (real Planet chips laid edge to edge, bench/scenes.build_scene) and on
  the sparse one (the Borneo PlanetScope scene repeated, 73% nodata);
* accuracy: against ONNX Runtime fp32 on the same real chips, the largest
  probability change and the share of tag decisions that change; for the INT8
  model also the validation-split comparison ``scenetag quantize`` stored in
  its spec.

The INT8 model defaults to the shipped one beside the default model.  Numbers
on a shared, noisy machine: compare ratios within one run.  Results:
docs/performance.md ("OpenVINO", "INT8").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.scenes import CACHE, DATA, build_scene, load_chips, repeat_scene  # noqa: E402

BORNEO = DATA / "scenes" / "planetscope_borneo_3m_analytic.tif"
PLANET = DATA / "chips" / "planet_amazon" / "images"
#: name -> (scene builder, bands)
SCENES = {"valid": None, "sparse": (3, 2, 1)}


def scenes(valid_chips: int, sparse_size: int) -> dict[str, Path]:
    """The fully valid and the sparse benchmark scenes, built once under bench/_data."""
    valid = build_scene(load_chips(PLANET, valid_chips), CACHE, 1)
    sparse = CACHE / f"borneo_x{sparse_size}.tif"
    if not sparse.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        repeat_scene(BORNEO, sparse, sparse_size // 512)
    return {"valid": valid, "sparse": sparse}


# -- measurements, each in its own process ------------------------------------------------
def measure_model(model: str, backend: str, seconds: float) -> dict:
    import numpy as np

    from scenetag.model.backends import create_predictor

    pred = create_predictor(model, backend=backend, device="cpu")
    x = load_chips(PLANET, 64)
    probs = np.concatenate([pred.predict(x[i:i + pred.batch_size]) for i in range(0, len(x), pred.batch_size)])
    batch = x[:pred.batch_size]
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        pred.predict(batch)
        n += len(batch)
    return {"chips_per_s": n / (time.perf_counter() - t0), "batch_size": pred.batch_size,
            "probs": probs.tolist(), "thresholds": list(pred.spec.thresholds),
            "quantization": pred.spec.extra.get("quantization")}


def measure_run(model: str, backend: str, scene: str, bands: tuple[int, ...] | None, out: str) -> dict:
    from scenetag.jobs.options import RunOptions
    from scenetag.jobs.runner import run_scene
    from scenetag.model.backends import create_predictor

    pred = create_predictor(model, backend=backend, device="cpu")
    t0 = time.perf_counter()
    res = run_scene(scene, out, pred, RunOptions(bands=bands), overwrite=True)
    dt = time.perf_counter() - t0
    return {"seconds": dt, "classified": res.n_chips_classified, "skipped": res.n_chips_skipped_nodata,
            "chips_per_s": res.n_chips_classified / dt}


def spawn(args: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"{args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    from scenetag.model.default import DEFAULT_MODEL

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--int8", type=Path, default=DEFAULT_MODEL.with_name("scenetag-default-int8.onnx"))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--ort-int8", action="store_true", help="also ONNX Runtime on the INT8 model")
    ap.add_argument("--seconds", type=float, default=6.0, help="model-only seconds per measurement")
    ap.add_argument("--valid-chips", type=int, default=400, help="chips in the fully valid scene")
    ap.add_argument("--sparse-size", type=int, default=8192, help="side of the sparse scene, px")
    ap.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        kind, model, backend, *rest = args.child
        if kind == "model":
            result = measure_model(model, backend, float(rest[0]))
        else:
            scene, bands, out = rest
            result = measure_run(model, backend, scene, tuple(int(b) for b in bands.split(",")) if bands else None,
                                 out)
        print(json.dumps(result))
        return
    import numpy as np

    built = scenes(args.valid_chips, args.sparse_size)
    engines = {"ORT fp32": (args.model, "onnx"), "OpenVINO fp32": (args.model, "openvino")}
    if args.int8.exists():
        engines["OpenVINO INT8"] = (args.int8, "openvino")
        if args.ort_int8:
            engines["ORT INT8"] = (args.int8, "onnx")
    else:
        print(f"no INT8 model at {args.int8}: make one with `scenetag quantize` and pass --int8")
    print(f"cores {os.cpu_count()}, load {os.getloadavg()[0]:.1f} at start; {args.rounds} interleaved rounds; "
          f"scenes: valid {built['valid'].name}, sparse {built['sparse'].name}")
    rates: dict[tuple[str, str], list[float]] = {}
    model_runs: dict[str, dict] = {}
    for _ in range(args.rounds):
        for name, (model, backend) in engines.items():
            m = spawn(["model", str(model), backend, str(args.seconds)])
            model_runs[name] = m
            rates.setdefault((name, "model"), []).append(m["chips_per_s"])
            for scene_name, path in built.items():
                bands = SCENES[scene_name]
                out = CACHE / f"engines_{scene_name}.gpkg"
                r = spawn(["run", str(model), backend, str(path), ",".join(map(str, bands or ())), str(out)])
                rates.setdefault((name, scene_name), []).append(r["chips_per_s"])
                model_runs[name][f"classified_{scene_name}"] = r["classified"]
    ref = np.asarray(model_runs["ORT fp32"]["probs"])
    thr = np.asarray(model_runs["ORT fp32"]["thresholds"])
    med = {k: statistics.median(v) for k, v in rates.items()}
    base = {s: med[("ORT fp32", s)] for s in ("model", "valid", "sparse")}
    print(f"\n| engine | model-only chips/s | x ORT | run, fully valid, chips/s | x ORT | run, sparse, chips/s | x ORT "
          f"| max prob. change vs ORT fp32 (64 real chips) | tag decisions changed (64 real chips) "
          f"| val split: tag decisions changed, samples-F2 fp32 -> INT8 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in engines:
        probs = np.asarray(model_runs[name]["probs"])
        changed = float(np.mean((probs >= thr) != (ref >= thr)))
        qz = model_runs[name].get("quantization")
        val = (f"{qz['tag_decisions_changed']:.2%}, {qz['samples_f2']['fp32']:.4f} -> {qz['samples_f2']['int8']:.4f}"
               if qz else "")
        cells = []
        for s in ("model", "valid", "sparse"):
            cells += [f"{med[(name, s)]:.1f} ({' / '.join(f'{v:.0f}' for v in rates[(name, s)])})",
                      f"{med[(name, s)] / base[s]:.2f}"]
        print(f"| {name} | " + " | ".join(cells) + f" | {np.abs(probs - ref).max():.2g} | {changed:.2%} | {val} |")
    print(f"\nchips classified: valid {model_runs['ORT fp32']['classified_valid']}, "
          f"sparse {model_runs['ORT fp32']['classified_sparse']}; load {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
