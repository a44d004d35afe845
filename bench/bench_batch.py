"""Benchmark ``batch`` on Dask: scenes per minute with 1 and 2 workers, and its overhead against ``run``.

Scenes: N GeoTIFFs derived from the real shared scenes.  Each repeats one
real scene (``landsat7_rgb_byte.tif`` or ``drone_rgba_alpha.tif``, in turn)
``--repeat`` x ``--repeat`` times side by side, with the geotransform
shifted so the copies tile the plane; tiled 256x256, LZW.  Scene i also
gets its own origin, so no two scenes are identical files.

Model: ``--model PATH``; else the shipped default model if it exists; else
(or with ``--tiny-chip N``) the tiny test model (mobilenetv3_small_050,
random weights, 64 px chips or N px), exported once into ``bench/_data``.
The model used is printed.

Measured, each ``--rounds`` times (the best is kept, since the machine is
shared and noise only ever adds time):

* throughput: the batch over the N scenes on an already started LocalCluster
  of 1 and of 2 worker processes (1 thread each), cluster start-up excluded
  but model shipping included; the scaling ratio is 2-worker over 1-worker
  scenes per minute;
* overhead on one scene: ``run_scene`` in this process (what ``cli.py run``
  does) against ``run_batch`` on the same scene, both with a fresh
  LocalCluster (what ``cli.py batch`` does) and with one already running.

Usage::

    python bench/bench_batch.py [--scenes 8] [--repeat 2] [--rounds 2] [--model PATH | --tiny-chip 256]
                                [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import rasterio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.scenes import DATA, bench_model, repeat_scene  # noqa: E402

SOURCES = ("landsat7_rgb_byte.tif", "drone_rgba_alpha.tif")


def choose_model(arg: str | None, tiny_chip: int | None) -> tuple[Path, str]:
    if arg:
        return Path(arg), f"{arg} (given)"
    chip = tiny_chip or 64
    return bench_model(chip, resolution_m=10.0 * 64 / chip, tiny=tiny_chip is not None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenes", type=int, default=8, help="number of derived scenes (N)")
    ap.add_argument("--repeat", type=int, default=2, help="each scene repeats a real scene R x R times")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of each measurement; the best is kept")
    ap.add_argument("--model", default=None)
    ap.add_argument("--tiny-chip", type=int, default=None,
                    help="use the tiny test model with this chip size (64 by default, where no default model)")
    ap.add_argument("--chips-per-task", type=int, default=256)
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("scenetag.tiler.scene").setLevel(logging.ERROR)  # the resolution warning, once per scene

    from scenetag.jobs.batch import run_batch
    from scenetag.jobs.cluster import connect
    from scenetag.jobs.options import RunOptions
    from scenetag.jobs.runner import run_scene
    from scenetag.model.backends import create_predictor

    logging.getLogger("distributed").setLevel(logging.WARNING)  # importing it set its own level
    tmp = Path(tempfile.mkdtemp(prefix="bench_batch_"))
    try:
        model_path, model_desc = choose_model(args.model, args.tiny_chip)
        predictor = create_predictor(model_path)
        options = RunOptions()
        scenes_dir = tmp / "scenes"
        scenes_dir.mkdir()
        for i in range(args.scenes):
            src = DATA / "scenes" / SOURCES[i % len(SOURCES)]
            repeat_scene(src, scenes_dir / f"scene_{i:02d}.tif", args.repeat, shift=i + 1, compress="lzw")
        scenes = sorted(scenes_dir.glob("*.tif"))
        with rasterio.open(scenes[0]) as s0, rasterio.open(scenes[1 % len(scenes)]) as s1:
            sizes = f"{s0.width}x{s0.height} and {s1.width}x{s1.height}"
        print(f"machine: {platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}")
        print(f"model: {model_desc}")
        print(f"scenes: {len(scenes)} derived scenes ({sizes} px), each a real scene "
              f"({', '.join(SOURCES)}) repeated {args.repeat}x{args.repeat} with a shifted geotransform")

        figures: dict = {"model": model_desc, "cores": os.cpu_count(), "scenes": len(scenes),
                         "repeat": args.repeat, "rounds": args.rounds}

        def timed_batch(inputs, scheduler, workers=None) -> tuple[float, object]:
            out = Path(tempfile.mkdtemp(dir=tmp))
            t0 = time.perf_counter()
            report = run_batch(inputs, out, predictor, options, scheduler=scheduler, workers=workers,
                               threads=1 if scheduler is None else None, chips_per_task=args.chips_per_task,
                               dashboard_address=None)
            seconds = time.perf_counter() - t0
            assert report.succeeded, report.summary()
            shutil.rmtree(out)
            return seconds, report

        per_workers = {}
        for n_workers in (1, 2):
            t0 = time.perf_counter()
            with connect(None, workers=n_workers, threads=1, dashboard_address=None) as (client, _):
                startup = time.perf_counter() - t0
                best, chips = float("inf"), 0
                for _ in range(args.rounds):
                    seconds, report = timed_batch([scenes_dir], client.scheduler.address)
                    best = min(best, seconds)
                    chips = sum(s.chips for s in report.scenes)
            spm = 60 * len(scenes) / best
            per_workers[n_workers] = {"seconds": best, "scenes_per_min": spm, "chips": chips,
                                      "chips_per_s": chips / best, "cluster_startup_s": startup}
            print(f"{n_workers} worker{'s' if n_workers > 1 else ' '}: {best:6.1f} s for {len(scenes)} scenes "
                  f"({chips} chips): {spm:6.1f} scenes/min, {chips / best:7.1f} chips/s "
                  f"(cluster start-up {startup:.1f} s, not included)")
        ratio = per_workers[2]["scenes_per_min"] / per_workers[1]["scenes_per_min"]
        print(f"scaling 2 workers / 1 worker: {ratio:.2f}x")
        figures["throughput"] = per_workers
        figures["scaling_2_over_1"] = ratio

        one = scenes[0]
        best_run = best_fresh = best_warm = float("inf")
        for _ in range(args.rounds):
            out = tmp / "run.gpkg"
            t0 = time.perf_counter()
            run_scene(one, out, predictor, options, overwrite=True)
            best_run = min(best_run, time.perf_counter() - t0)
            seconds, _ = timed_batch([one], None, workers=2)
            best_fresh = min(best_fresh, seconds)
        with connect(None, workers=2, threads=1, dashboard_address=None) as (client, _):
            for _ in range(args.rounds):
                seconds, _ = timed_batch([one], client.scheduler.address)
                best_warm = min(best_warm, seconds)
        print(f"one scene ({one.name}): run {best_run:.2f} s; batch with a new LocalCluster (2 workers) "
              f"{best_fresh:.2f} s ({best_fresh - best_run:+.2f} s, {best_fresh / best_run:.2f}x); "
              f"batch on a running cluster {best_warm:.2f} s ({best_warm - best_run:+.2f} s, "
              f"{best_warm / best_run:.2f}x)")
        figures["one_scene"] = {"run_s": best_run, "batch_new_cluster_s": best_fresh,
                                "batch_running_cluster_s": best_warm}
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
