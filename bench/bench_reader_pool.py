"""Reader pool benchmark: the per-scene fixed cost of reader processes, and ``batch`` with them in its workers.

    python bench/bench_reader_pool.py [--scenes 8] [--readers 2] [--rounds 2] [--json out.json]

Scenes: ``--scenes`` copies of the real ``landsat7_rgb_byte.tif`` (791x718,
uint8 RGB, nodata collar), each with its own origin.  Model: the tiny test
model (64 px chips at 10 m, so about 130 chips per scene), built once into
``bench/_data``.

Measured, best of ``--rounds`` (the machine is shared; noise only adds time):

* **fixed cost per scene** in one process, classifying each scene with
  ``--reader processes`` and a stand-in predictor that costs nothing (so
  what is left is reading and the readers' start-up): the process's shared
  reader pool (started by the first scene, which is reported apart), against
  a new :class:`~scenetag.tiler.feed.ProcessFeed` (readers and slots) per
  scene, and reader threads for reference;
* **batch** over the scenes on a LocalCluster of 2 worker processes
  (1 thread each, started by :func:`scenetag.jobs.cluster.connect`, so
  non-daemonic), with ``--reader processes`` against ``--reader threads``,
  the real tiny model, chips per task 40 (several strips per scene).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.scenes import DATA, bench_model, repeat_scene  # noqa: E402


class FreePredictor:
    """Probabilities of zero at no cost: what is timed is reading."""

    on_gpu = False
    device = "cpu"

    def __init__(self, spec, batch_size: int = 64) -> None:
        self.spec, self.batch_size = spec, batch_size

    def predict(self, chips: np.ndarray) -> np.ndarray:
        return np.zeros((len(chips), self.spec.n_labels), np.float32)


def scene_costs(scenes: list[Path], spec, readers: int, rounds: int) -> dict:
    import scenetag.jobs.pipeline as pipeline
    from scenetag.jobs.classify import classify_cells
    from scenetag.jobs.options import RunOptions
    from scenetag.jobs.planning import plan_scene
    from scenetag.tiler.reader_pool import close_shared_pools, shared_pool

    predictor = FreePredictor(spec)
    plans = [plan_scene(s, spec, RunOptions(reader="processes", readers=readers)) for s in scenes]
    out: dict = {"chips_per_scene": len(plans[0].grid)}

    def timed(plan) -> float:
        t0 = time.perf_counter()
        classify_cells(plan, predictor)
        return time.perf_counter() - t0

    best: dict[str, float] = {}
    first: list[float] = []
    for _ in range(rounds):
        close_shared_pools()  # each round starts cold
        times = [timed(p) for p in plans]
        first.append(times[0])
        best["pool"] = min(best.get("pool", 1e9), float(np.mean(times[1:])))
        real = pipeline.shared_pool
        pipeline.shared_pool = lambda workers=None: None  # a pool of the feed's own, per scene
        try:
            best["feed_per_scene"] = min(best.get("feed_per_scene", 1e9), float(np.mean([timed(p) for p in plans])))
        finally:
            pipeline.shared_pool = real
        threads = [replace(p, options=replace(p.options, reader="threads")) for p in plans]
        best["threads"] = min(best.get("threads", 1e9), float(np.mean([timed(p) for p in threads])))
    out["s_per_scene"] = best
    out["s_first_scene_with_pool"] = min(first)
    out["fixed_cost_saved_s"] = best["feed_per_scene"] - best["pool"]
    out["pool_starts"] = shared_pool(readers).starts
    close_shared_pools()
    return out


def batch_rates(scenes: list[Path], model: Path, readers: int, rounds: int, work: Path) -> dict:
    from scenetag.jobs.batch import run_batch
    from scenetag.jobs.cluster import connect
    from scenetag.jobs.options import RunOptions
    from scenetag.model.backends import create_predictor

    predictor = create_predictor(model)
    out: dict = {}
    with connect(workers=2, threads=1, dashboard_address=None) as (client, info):
        from scenetag.jobs.cluster import thread_reader_workers

        assert thread_reader_workers(client) == 0
        for reader in ("processes", "threads", "processes", "threads")[: 2 * max(1, rounds)]:
            opts = RunOptions(reader=reader, readers=readers)
            folder = Path(tempfile.mkdtemp(dir=work))
            t0 = time.perf_counter()
            report = run_batch(scenes, folder, predictor, opts, scheduler=client.scheduler.address,
                               chips_per_task=40, force=True)
            seconds = time.perf_counter() - t0
            assert report.succeeded, [s.error for s in report.scenes]
            chips = sum(s.chips for s in report.scenes)
            rate = chips / seconds
            prev = out.get(reader)
            if prev is None or rate > prev["chips_per_s"]:
                out[reader] = {"seconds": seconds, "chips": chips, "chips_per_s": rate,
                               "scenes_per_min": 60 * len(scenes) / seconds}
    out["processes_over_threads"] = out["processes"]["chips_per_s"] / out["threads"]["chips_per_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenes", type=int, default=8)
    ap.add_argument("--readers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from scenetag.model.backends import create_predictor

    model, described = bench_model(64, 10.0, tiny=True)
    spec = create_predictor(model).spec
    with tempfile.TemporaryDirectory(prefix="bench-pool-") as tmp:
        work = Path(tmp)
        src = DATA / "scenes" / "landsat7_rgb_byte.tif"
        scenes = [repeat_scene(src, work / f"scene{i:02d}.tif", 1, shift=i, compress="lzw") for i in range(args.scenes)]
        result = {"model": described, "scenes": args.scenes, "readers": args.readers,
                  "fixed_cost": scene_costs(scenes, spec, args.readers, args.rounds),
                  "batch": batch_rates(scenes, model, args.readers, args.rounds, work)}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
