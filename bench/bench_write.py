"""Benchmark the streamed write against the write at the end: scenes per minute for ``run`` and ``batch``.

Scenes: N GeoTIFFs derived from the real shared scenes (``landsat7_rgb_byte.tif``
and ``drone_rgba_alpha.tif`` in turn, each repeated ``--repeat`` x ``--repeat``
times with a shifted geotransform: :func:`bench.scenes.repeat_scene`).

Model: ``--model PATH``, else the tiny test model (mobilenetv3_small_050, random
weights, ``--tiny-chip`` px chips): a cheap model gives many chips per second, so
the write is a large part of a scene, as it is on a GPU.

Measured, ``--rounds`` times, the four runs interleaved within each round (the
order alternating from round to round) since the machine is shared and noisy;
the figures are medians over rounds and the ratios are taken within a round:

* ``run``: every scene in turn with :func:`jobs.runner.run_scene` in this
  process, with the streamed write and with the write at the end
  (``jobs.runner.STREAMED_WRITE``);
* ``batch``: the N scenes on an already started LocalCluster (``--workers``
  processes, one thread each, declaring ``GPU=1`` so that the job streams),
  both ways (streamed: the chain of part tasks, ``--part-rows`` grid cells or
  more each, decided in this process);
* the write's share of ``run``: the seconds a scene waits for its write (the
  part after the classification; all of it for the write at the end) over the
  scene's seconds, and for the streamed write also the seconds its writer
  thread spent beside the classification.

With ``--gpu-shape MS``, a stand-in for a GPU: the model's place is taken by
a predictor that waits ``MS`` milliseconds a chip (its cores free meanwhile,
as they are while a GPU computes) and returns constant probabilities, in
``run`` and on the workers; ``batch`` runs on one worker with ``--threads``
threads that declares ``GPU=1``, as a GPU worker is started (docs/batch.md).
What it shows is whether the write overlaps a classification that leaves the
cores idle; the stand-in's rate is not a GPU's.

Usage::

    python bench/bench_write.py [--scenes 16] [--repeat 3] [--rounds 3] [--workers 2] [--json out.json]
                                [--gpu-shape MS --threads 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.scenes import DATA, bench_model, repeat_scene  # noqa: E402

SOURCES = ("landsat7_rgb_byte.tif", "drone_rgba_alpha.tif")


class WaitingModel:
    """A stand-in for a model on a GPU: ``ms_per_chip`` milliseconds of waiting a chip, constant probabilities."""

    def __init__(self, spec, sha256: str, path: str, ms_per_chip: float) -> None:
        self.spec, self.sha256, self.path = spec, sha256, path
        self.batch_size, self.device, self.on_gpu = 64, "cpu", False
        self.seconds_per_chip = ms_per_chip / 1000.0

    def predict(self, chips):
        import numpy as np

        time.sleep(len(chips) * self.seconds_per_chip)  # the cores are free, as while a GPU computes
        return np.full((len(chips), self.spec.n_labels), 0.3, np.float32)


def waiting_workers(ms_per_chip: float):
    """A worker plugin that makes every worker classify with :class:`WaitingModel`."""
    from distributed import WorkerPlugin

    class Waiting(WorkerPlugin):
        def setup(self, worker):
            import scenetag.jobs.shipping as shipping

            shipping.worker_predictor = lambda m: WaitingModel(m.spec, m.sha256, m.path, ms_per_chip)

    return Waiting()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenes", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3, help="each scene repeats a real scene R x R times")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes for batch")
    ap.add_argument("--model", default=None)
    ap.add_argument("--tiny-chip", type=int, default=64)
    ap.add_argument("--chips-per-task", type=int, default=256)
    ap.add_argument("--part-rows", type=int, default=None, help="chips per append (default stream.PART_ROWS)")
    ap.add_argument("--window", type=int, default=None, help="reorder window (default stream.REORDER_WINDOW)")
    ap.add_argument("--gpu-shape", type=float, default=None, metavar="MS",
                    help="classify with a stand-in that waits MS ms a chip, batch on one GPU=1 worker")
    ap.add_argument("--threads", type=int, default=2, help="threads of the GPU=1 worker (with --gpu-shape)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("scenetag.tiler.scene").setLevel(logging.ERROR)
    logging.getLogger("scenetag.jobs.planning").setLevel(logging.ERROR)  # the resolution warning

    import scenetag.jobs.runner as runner
    import scenetag.outputs_schema.stream as stream

    if args.part_rows is not None:
        stream.PART_ROWS = args.part_rows
    if args.window is not None:
        stream.REORDER_WINDOW = args.window
    from scenetag.jobs.batch import run_batch
    from scenetag.jobs.cluster import connect
    from scenetag.jobs.options import RunOptions
    from scenetag.model.backends import create_predictor

    logging.getLogger("distributed").setLevel(logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="bench_write_"))
    try:
        if args.model:
            model_path, model_desc = Path(args.model), f"{args.model} (given)"
        else:
            model_path, model_desc = bench_model(args.tiny_chip, 10.0 * 64 / args.tiny_chip, tiny=True)
        predictor = create_predictor(model_path, backend="onnx")
        if args.gpu_shape is not None:
            predictor = WaitingModel(predictor.spec, predictor.sha256, str(predictor.path), args.gpu_shape)
            model_desc += f", classified by a stand-in that waits {args.gpu_shape:g} ms a chip"
        options = RunOptions()
        scenes_dir = tmp / "scenes"
        scenes_dir.mkdir()
        for i in range(args.scenes):
            repeat_scene(DATA / "scenes" / SOURCES[i % len(SOURCES)], scenes_dir / f"scene_{i:02d}.tif",
                         args.repeat, shift=i + 1, compress="lzw")
        scenes = sorted(scenes_dir.glob("*.tif"))
        print(f"machine: {platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}")
        print(f"model: {model_desc}")
        print(f"scenes: {len(scenes)}, each a real scene ({', '.join(SOURCES)}) repeated {args.repeat}x{args.repeat}")

        def timed_run(streamed: bool) -> dict:
            runner.STREAMED_WRITE = streamed
            out = Path(tempfile.mkdtemp(dir=tmp))
            t0 = time.perf_counter()
            results = [runner.run_scene(str(s), str(out / f"{s.stem}.gpkg"), predictor, options) for s in scenes]
            seconds = time.perf_counter() - t0
            shutil.rmtree(out)
            waits = sum(r.timings["write"] for r in results)
            beside = sum(r.timings.get("write_streamed", 0.0) for r in results)
            return {"seconds": seconds, "chips": sum(r.n_chips_classified for r in results),
                    "write_wait_s": waits, "write_beside_s": beside,
                    "scene_s": sum(r.seconds for r in results)}

        def timed_batch(address: str, streamed: bool) -> dict:
            runner.STREAMED_WRITE = streamed
            out = Path(tempfile.mkdtemp(dir=tmp))
            t0 = time.perf_counter()
            report = run_batch([scenes_dir], out, predictor, options, scheduler=address,
                               chips_per_task=args.chips_per_task, dashboard_address=None)
            seconds = time.perf_counter() - t0
            assert report.succeeded, report.summary()
            shutil.rmtree(out)
            return {"seconds": seconds, "chips": sum(s.chips for s in report.scenes)}

        rounds: list[dict] = []
        # The workers declare GPU=1 either way: the batch streams by part tasks only where the classify
        # tasks go to GPU workers; with one thread a worker that changes nothing else.
        cluster = (dict(workers=args.workers, threads=1, gpu=True) if args.gpu_shape is None
                   else dict(workers=1, threads=args.threads, gpu=True))
        with connect(None, dashboard_address=None, **cluster) as (client, _):
            address = client.scheduler.address
            if args.gpu_shape is not None:
                client.register_plugin(waiting_workers(args.gpu_shape), name="waiting-model")
            timed_batch(address, True)  # warm the workers (model shipped, imports) before measuring
            for r in range(args.rounds):
                order = [True, False] if r % 2 == 0 else [False, True]
                rnd: dict = {}
                for streamed in order:
                    rnd[("run", streamed)] = timed_run(streamed)
                for streamed in order:
                    rnd[("batch", streamed)] = timed_batch(address, streamed)
                rounds.append(rnd)
                line = ", ".join(f"{how} {'streamed' if s else 'at end'} {v['seconds']:.1f} s"
                                 for (how, s), v in rnd.items())
                print(f"round {r + 1}: {line}", flush=True)
        runner.STREAMED_WRITE = True

        figures: dict = {"model": model_desc, "cores": os.cpu_count(), "scenes": len(scenes), "repeat": args.repeat,
                         "rounds": args.rounds, "cluster": cluster, "chips_per_task": args.chips_per_task,
                         "part_rows": stream.PART_ROWS, "gpu_shape_ms_per_chip": args.gpu_shape}
        for how in ("run", "batch"):
            spm = {s: [60 * len(scenes) / rnd[(how, s)]["seconds"] for rnd in rounds] for s in (True, False)}
            ratios = [a / b for a, b in zip(spm[True], spm[False])]
            chips = rounds[0][(how, True)]["chips"]
            figures[how] = {"scenes_per_min_streamed": statistics.median(spm[True]),
                            "scenes_per_min_at_end": statistics.median(spm[False]),
                            "ratio_streamed_over_at_end": statistics.median(ratios), "ratios": ratios,
                            "chips": chips}
            print(f"{how:5s}: streamed {statistics.median(spm[True]):6.1f} scenes/min, at the end "
                  f"{statistics.median(spm[False]):6.1f} scenes/min: streamed/at end {statistics.median(ratios):.3f} "
                  f"(per round {', '.join(f'{x:.3f}' for x in ratios)}; {chips} chips)")
        for streamed in (False, True):
            share = statistics.median(rnd[("run", streamed)]["write_wait_s"] / rnd[("run", streamed)]["scene_s"]
                                      for rnd in rounds)
            beside = statistics.median(rnd[("run", streamed)]["write_beside_s"] / rnd[("run", streamed)]["scene_s"]
                                       for rnd in rounds)
            figures[f"run_write_share_{'streamed' if streamed else 'at_end'}"] = {"waited": share, "beside": beside}
            print(f"run, write {'streamed' if streamed else 'at the end'}: the scene waits for its write "
                  f"{share:.1%} of its time" + (f" (and its writer thread wrote {beside:.1%} of it beside the "
                                                "classification)" if streamed else ""))
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
