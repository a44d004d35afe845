"""GPU benchmark: readers, model-only and end-to-end chips/s, per precision, in one run.

    python bench/bench_gpu.py --chips DIR --checkpoint CKPT [--repeat 10] [--json OUT]

The scene is real-derived: the Planet Amazon chips in ``--chips`` (JPEG,
the model's own domain) are laid out edge to edge as a square mosaic, and the
mosaic is repeated ``--repeat`` x ``--repeat`` times into a GeoTIFF tiled
256, DEFLATE (level 1, compressed on every core to save set-up time; decoding
costs the same at any level), nodata 0, 3 m, EPSG:32721.  The file is read
from the page cache, as in issue 6's reference reading figures.

It reports:

* **readers**: chips/s read (mask and data) by threads reading one chip per
  GDAL call, and by the reader processes reading runs of chips;
* **model-only**: uint8 chips already on the GPU, normalised there and
  classified, per precision, kernels launched eagerly (the ceiling; bf16
  replayed from a CUDA graph too);
* **end-to-end**: :func:`jobs.scene_job.classify_cells` on the scene, from
  opening the scene to the probability table (reader processes, double
  buffering), per precision, with GPU utilisation (NVML, sampled every 20 ms),
  GPU busy time (CUDA events) and where the host's time went;
* **accuracy**: the share of tag decisions on the real chips that bf16 and
  fp16 change against fp32;
* **variants** of the bf16 end-to-end run, on the same scene in the same run
  (ratios are what compare): kernels launched eagerly instead of replayed
  from a CUDA graph, chips copied into the pinned ring instead of uploaded
  from the page-locked reader slots, one reader process fewer or more, a
  larger batch.

The GeoPackage write is not part of "end-to-end" here; ``bench/bench_scene.py``
measures it (it runs on the CPU, whatever the model runs on).
Without CUDA it still runs (``--device cpu``, small sizes) to check itself.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PRECISIONS = ("fp32", "bf16", "fp16")


def bench_readers(scene: Path, spec, n_cells: int, threads: int, workers: int) -> dict:
    """chips/s read by one-chip thread reads and by run-reading processes (no model)."""
    import rasterio

    from scenetag.jobs.options import RunOptions
    from scenetag.jobs.planning import plan_scene
    from scenetag.config import gdal_cachemax_mb
    from scenetag.tiler.feed import ProcessFeed

    plan = plan_scene(scene, spec, RunOptions())
    cells = list(plan.grid)[:n_cells]
    out = {"cells": len(cells)}
    with rasterio.Env(GDAL_CACHEMAX=gdal_cachemax_mb()), plan.reader() as reader, ThreadPoolExecutor(threads) as pool:
        t0 = time.perf_counter()
        n = sum(len(r.kept) for r in pool.map(reader.read, cells, chunksize=8))
        out[f"threads_chip_reads_{threads}"] = n / (time.perf_counter() - t0)
    for w in sorted({workers, 16}):
        feed = ProcessFeed(plan.reader(), cells, workers=w)
        with feed:
            t0 = time.perf_counter()
            n = 0
            first = None
            for run in feed:
                if first is None:
                    first = time.perf_counter()
                n += len(run.kept)
                run.release()
            end = time.perf_counter()
        out[f"processes_run_reads_{w}"] = n / (end - first)
        out[f"processes_run_reads_{w}_with_startup"] = n / (end - t0)
    return out


def model_only(predictor, chips: np.ndarray, batch: int, seconds: float = 3.0, graphed: bool = False) -> float:
    """chips/s of normalise + forward on uint8 chips already on the device (``graphed``: replayed from a CUDA graph)."""
    import torch

    reps = -(-batch // len(chips))
    x = torch.from_numpy(np.concatenate([chips] * reps)[:batch]).to(predictor.device)
    step = predictor._graphed if graphed else predictor._forward
    sync = torch.cuda.synchronize if predictor.device.startswith("cuda") else (lambda: None)
    with torch.inference_mode():
        for _ in range(3):  # graphed: eager the first time, captured the second
            step(x)
        sync()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            step(x)
            n += batch
            if n % (batch * 4) == 0:
                sync()
        sync()
    return n / (time.perf_counter() - t0)


class GpuSampler:
    """Mean GPU utilisation (NVML) over a block, sampled every 20 ms."""

    def __init__(self) -> None:
        self.samples: list[int] = []
        self._stop = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._h = pynvml.nvmlDeviceGetHandleByIndex(0)
            self._nvml = pynvml
        except Exception:  # no NVML here
            self._nvml = None

    def _loop(self) -> None:
        while not self._stop.wait(0.02):
            self.samples.append(self._nvml.nvmlDeviceGetUtilizationRates(self._h).gpu)

    def __enter__(self) -> "GpuSampler":
        if self._nvml:
            self._t = threading.Thread(target=self._loop, daemon=True)
            self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._nvml:
            self._t.join()

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.samples)) if self.samples else None


def end_to_end(scene: Path, predictor, workers: int | None, batch: int | None, direct: bool = True) -> dict:
    """classify_cells on the scene with reader processes: chips/s and where the time went.

    ``direct=False`` refuses to page-lock the reader slots, so chips are copied
    into the pinned ring as before (for comparison).
    """
    from scenetag.jobs.options import RunOptions
    from scenetag.jobs.classify import classify_cells
    from scenetag.jobs.planning import plan_scene

    predictor.gpu_seconds = 0.0
    if not direct:
        predictor.register_host = lambda memory: False  # the instance's, shadowing the method
    with GpuSampler() as gpu:
        t0 = time.perf_counter()
        plan = plan_scene(scene, predictor.spec, RunOptions(reader="processes", readers=workers, batch_size=batch))
        t_plan = time.perf_counter() - t0
        try:
            table = classify_cells(plan, predictor)
        finally:
            predictor.__dict__.pop("register_host", None)
        wall = time.perf_counter() - t0
    tm = table.extra["timings"]
    return {
        "chips": len(table), "skipped": table.n_skipped_nodata, "wall_s": wall,
        "chips_per_s": len(table) / wall,
        "chips_per_s_after_reader_startup": len(table) / (wall - t_plan - tm["reader_startup"]),
        "gpu_util_mean_pct": gpu.mean, "gpu_busy_share": predictor.gpu_seconds / wall,
        "plan_s": t_plan, **{k: v for k, v in tm.items()},
    }


def accuracy(predictors: dict, chips: np.ndarray) -> dict:
    """Share of tag decisions that bf16/fp16 change against fp32 on real chips."""

    ref = predictors["fp32"]
    p32 = ref.predict(chips)
    t32 = ref.spec.tags(p32)
    out = {"chips": len(chips), "decisions": int(t32.size), "positive_tags_fp32": int(t32.sum())}
    for name, pred in predictors.items():
        if name == "fp32":
            continue
        p = pred.predict(chips)
        changed = ref.spec.tags(p) != t32
        out[name] = {"tag_decisions_changed": float(changed.mean()), "n_changed": int(changed.sum()),
                     "max_abs_prob_diff": float(np.abs(p - p32).max())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chips", type=Path, required=True, help="folder of Planet Amazon JPEG chips")
    ap.add_argument("--checkpoint", type=Path, required=True, help="torch checkpoint of the model")
    ap.add_argument("--work", type=Path, default=Path("/tmp/scenetag_bench_gpu"))
    ap.add_argument("--repeat", type=int, default=10, help="mosaic repeats per side")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--workers", type=int, default=None, help="reader processes (default: cores less one)")
    ap.add_argument("--reader-cells", type=int, default=6000)
    ap.add_argument("--model-seconds", type=float, default=3.0)
    ap.add_argument("--precisions", default=",".join(PRECISIONS))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import torch

    from scenetag.model.backends.torch_backend import TorchPredictor
    from scenetag.tiler.reader_pool import default_workers

    res: dict = {"device": args.device, "torch": torch.__version__,
                 "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                 "cores": len(os.sched_getaffinity(0)), "batch": args.batch,
                 "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32)}
    workers = args.workers or default_workers()
    res["reader_processes"] = workers

    def save() -> None:
        if args.json:
            args.json.write_text(json.dumps(res, indent=1))

    t0 = time.perf_counter()
    from bench.scenes import build_scene, load_chips

    chips = load_chips(args.chips, 10_000)
    scene = build_scene(chips, args.work, args.repeat)
    res["scene"] = {"path": str(scene), "bytes": scene.stat().st_size, "chips_in_mosaic": int(np.sqrt(len(chips))) ** 2,
                    "repeat": args.repeat, "build_s": time.perf_counter() - t0, "real_chips": len(chips)}
    print(f"scene {scene.name}: {scene.stat().st_size / 1e9:.2f} GB, built in {res['scene']['build_s']:.1f} s", flush=True)
    save()

    precisions = [p for p in args.precisions.split(",") if args.device.startswith("cuda") or p != "fp16"]
    predictors = {p: TorchPredictor(args.checkpoint, device=args.device, precision=p, batch_size=args.batch)
                  for p in precisions}
    spec = predictors[precisions[0]].spec

    res["readers"] = bench_readers(scene, spec, args.reader_cells, threads=16, workers=workers)
    print("readers:", {k: round(v) for k, v in res["readers"].items()}, flush=True)
    save()

    res["model_only"] = {}
    for p, pred in predictors.items():
        res["model_only"][p] = model_only(pred, chips, args.batch, args.model_seconds)
        print(f"model-only {p} batch {args.batch}: {res['model_only'][p]:.0f} chips/s", flush=True)
    if "bf16" in predictors and args.device.startswith("cuda"):
        res["model_only"]["bf16_batch1024"] = model_only(predictors["bf16"], chips, 1024, args.model_seconds)
        print(f"model-only bf16 batch 1024: {res['model_only']['bf16_batch1024']:.0f} chips/s", flush=True)
    save()

    res["accuracy"] = accuracy(predictors, chips)
    print("accuracy:", json.dumps(res["accuracy"]), flush=True)
    save()

    res["end_to_end"] = {}
    for p, pred in predictors.items():
        e = end_to_end(scene, pred, workers, args.batch)
        e["ratio_to_model_only_same_precision"] = e["chips_per_s"] / res["model_only"][p]
        if "bf16" in res["model_only"]:
            e["ratio_to_model_only_bf16"] = e["chips_per_s"] / res["model_only"]["bf16"]
        res["end_to_end"][p] = e
        print(f"end-to-end {p}: {e['chips']} chips in {e['wall_s']:.2f} s = {e['chips_per_s']:.0f} chips/s "
              f"({e['ratio_to_model_only_same_precision']:.2f} of model-only {p}); GPU util "
              f"{e['gpu_util_mean_pct']}%, busy {e['gpu_busy_share']:.2f}; reader start-up "
              f"{e['reader_startup']:.2f} s, page-lock {e['host_register']:.2f} s (direct {e['direct_upload']}), "
              f"wait for reads {e['wait_read']:.2f} s, submit {e['submit']:.2f} s, "
              f"wait for uploads {e['wait_upload']:.2f} s, wait for GPU {e['wait_infer']:.2f} s", flush=True)
        save()

    if "bf16" in predictors and args.device.startswith("cuda"):
        pred = predictors["bf16"]
        eager = TorchPredictor(args.checkpoint, device=args.device, precision="bf16", batch_size=args.batch,
                               cuda_graphs=False)
        variants = {"bf16_eager": (eager, dict(workers=workers, batch=args.batch)),
                    "bf16_copy": (pred, dict(workers=workers, batch=args.batch, direct=False))}
        for w in sorted({max(1, workers - 1), min(16, workers + 1)} - {workers}):
            variants[f"bf16_readers{w}"] = (pred, dict(workers=w, batch=args.batch))
        variants["bf16_batch512"] = (pred, dict(workers=workers, batch=512))
        model_only(pred, chips, 512, 0.5)  # cuDNN picks its kernels for the new shape first
        res["model_only"]["bf16_graphs"] = model_only(pred, chips, args.batch, args.model_seconds, graphed=True)
        print(f"model-only bf16 from a CUDA graph: {res['model_only']['bf16_graphs']:.0f} chips/s", flush=True)
        res["variants"] = {}
        for name, (p, kw) in variants.items():
            try:
                e = end_to_end(scene, p, **kw)
            except Exception as exc:  # noqa: BLE001 - one failed variant must not lose the others
                res["variants"][name] = {"error": repr(exc)}
                print(f"variant {name} failed: {exc!r}", flush=True)
                continue
            e["ratio_to_model_only_bf16"] = e["chips_per_s"] / res["model_only"]["bf16"]
            res["variants"][name] = e
            print(f"variant {name}: {e['chips_per_s']:.0f} chips/s ({e['ratio_to_model_only_bf16']:.2f} of "
                  f"model-only bf16); GPU busy {e['gpu_busy_share']:.2f}; submit {e['submit']:.2f} s, "
                  f"wait for reads {e['wait_read']:.2f} s", flush=True)
            save()
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
