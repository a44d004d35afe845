"""Issue 16's GPU check in one call: ``batch`` on one GPU worker against ``run``, end to end, and model-only bf16.

    python bench/bench_fleet_gpu.py [--chips DIR] [--scenes 4] [--repeat 4] [--rounds 1] [--json OUT]

Everything is measured in the same process, on the same scenes, with the same
torch checkpoint in the same precision:

* **model-only**: uint8 chips already on the device, normalised and
  classified, kernels launched eagerly (the ceiling: ``bench_gpu.model_only``);
* **run**: :func:`jobs.runner.run_scene` on each scene in turn, end to end
  (plan, read, classify, the streamed write, rename), reader processes from
  this process's warm pool;
* **batch**: :func:`jobs.batch.run_batch` over the same scenes on a LocalCluster
  of one non-daemonic worker that declares ``GPU=1`` (``--threads`` threads),
  the checkpoint shipped to it and run there on the torch backend.

It prints chips/s for each, ``run`` over model-only (the issue's target: at
least 0.6) and ``batch`` over ``run`` (target: at least 0.9). A warm-up scene
goes first through each path (cuDNN's autotuning, the worker's model and
reader pool), and the rounds alternate the order of ``run`` and ``batch``.

Scenes: ``--chips`` (Planet Amazon JPEG chips, the model's own domain) laid
edge to edge as a square mosaic and repeated ``--repeat`` x ``--repeat``
times (:func:`bench.scenes.build_scene`, as ``bench/bench_gpu.py`` builds its
scene), then copied once per scene with its own origin.  The network is timm's
``--arch`` with random weights unless ``--checkpoint`` is given: the rates do
not depend on the weights.

On the lent H200 the image has torch and timm but not rasterio, pyogrio,
pyproj, geopandas or dask.  ``bench/gpu_site.sh`` packs those into
``bench/_data/gpusite.tar.xz`` (about 34 MiB; ``cli.py run`` worked on it
here under Python 3.12 with numpy 2.5, as the image has) and copies 576
chips into ``bench/_data/chips`` (about 10 MB).  Carry both, and leave the
shipped ONNX files out of the working tree to stay under the 64 MiB a call
carries::

    mkdir -p /tmp/site && tar -xJf bench/_data/gpusite.tar.xz -C /tmp/site &&
    PYTHONPATH=/tmp/site:. python3 bench/bench_fleet_gpu.py --chips bench/_data/chips --json $OUT/fleet_gpu.json

Without CUDA it checks itself: ``--device cpu --precision fp32 --repeat 1
--arch mobilenetv3_small_050``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.scenes import DATA  # noqa: E402

#: Chips in the mosaic (24 x 24): 9 216 chips a scene at ``--repeat 4``.
MOSAIC_CHIPS = 576


def scene_copies(base: Path, n: int) -> list[Path]:
    """``n`` copies of ``base``, each with its own origin (east of the last), so that each is its own scene."""
    import rasterio
    from affine import Affine

    out = []
    with rasterio.open(base) as ds:
        t, width = ds.transform, ds.width
    for i in range(n):
        path = base.with_name(f"{base.stem}_{i:02d}.tif")
        shutil.copyfile(base, path)
        with rasterio.open(path, "r+") as ds:
            ds.transform = Affine(t.a, t.b, t.c + (i + 1) * width * t.a, t.d, t.e, t.f)
        out.append(path)
    return out


def make_checkpoint(arch: str, work: Path) -> Path:
    """A random-weight ``arch`` with the 17 Planet labels at 256 px, 3 m, as a checkpoint."""
    from scenetag.model.spec import PLANET_LABELS, ModelSpec
    from scenetag.model.training.checkpoint import save_checkpoint
    from tests.model_fixtures import small_model

    spec = ModelSpec.create(f"bench-{arch}", arch, PLANET_LABELS, 0.2, chip_size=256, resolution_m=3.0)
    return save_checkpoint(work / f"{arch}.pt", small_model(spec), spec, replace=True)


def timed_run(scenes: list[Path], predictor, out: Path) -> dict:
    from scenetag.jobs.options import RunOptions
    from scenetag.jobs.runner import run_scene

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results = [run_scene(str(s), str(out / f"{s.stem}.gpkg"), predictor, RunOptions(reader="processes"))
               for s in scenes]
    seconds = time.perf_counter() - t0
    chips = sum(r.n_chips_classified for r in results)
    return {"seconds": seconds, "chips": chips, "chips_per_s": chips / seconds,
            "write_wait_s": sum(r.timings.get("write", 0.0) for r in results)}


def timed_batch(scenes: list[Path], predictor, address: str, device: str, precision: str, out: Path) -> dict:
    from scenetag.jobs.batch import run_batch
    from scenetag.jobs.options import RunOptions

    t0 = time.perf_counter()
    report = run_batch(scenes, out, predictor, RunOptions(reader="processes"), device=device, precision=precision,
                       scheduler=address, force=True, dashboard_address=None)
    seconds = time.perf_counter() - t0
    if not report.succeeded:
        raise SystemExit(f"batch failed: {report.summary()}")
    chips = sum(s.chips for s in report.scenes)
    return {"seconds": seconds, "chips": chips, "chips_per_s": chips / seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chips", type=Path, default=DATA / "chips" / "planet_amazon" / "images",
                    help="folder of Planet Amazon JPEG chips")
    ap.add_argument("--scenes", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=4, help="mosaic repeats per side (4: 9 216 chips a scene)")
    ap.add_argument("--arch", default="tf_efficientnet_lite0")
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--threads", type=int, default=2, help="threads of the GPU=1 worker")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--model-seconds", type=float, default=3.0)
    ap.add_argument("--work", type=Path, default=None, help="where scenes are built (default: a temporary folder)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("distributed").setLevel(logging.WARNING)

    import torch

    from bench.bench_gpu import model_only
    from bench.scenes import build_scene, load_chips
    from scenetag.jobs.cluster import connect
    from scenetag.model.backends.torch_backend import TorchPredictor

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_fleet_gpu_"))
    work.mkdir(parents=True, exist_ok=True)
    res: dict = {"device": args.device, "precision": args.precision, "torch": torch.__version__,
                 "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                 "cores": len(os.sched_getaffinity(0)), "threads": args.threads}

    def save() -> None:
        if args.json:
            args.json.write_text(json.dumps(res, indent=1))

    try:
        t0 = time.perf_counter()
        chips = load_chips(args.chips, MOSAIC_CHIPS)
        warm, *scenes = scene_copies(build_scene(chips, work, args.repeat), args.scenes + 1)
        checkpoint = args.checkpoint or make_checkpoint(args.arch, work)
        predictor = TorchPredictor(checkpoint, device=args.device, precision=args.precision)
        res["scenes"] = {"n": len(scenes), "mosaic_chips": len(chips), "repeat": args.repeat,
                         "bytes_each": scenes[0].stat().st_size, "build_s": time.perf_counter() - t0}
        res["model"] = {"checkpoint": str(checkpoint), "arch": predictor.spec.arch, "batch": predictor.batch_size}
        print(f"{len(scenes)} scenes: {len(chips)} Planet chips x{args.repeat}x{args.repeat}, "
              f"{scenes[0].stat().st_size / 1e9:.2f} GB each, built in {res['scenes']['build_s']:.0f} s; "
              f"{predictor.spec.arch} {args.precision} on {args.device}", flush=True)

        res["model_only_chips_per_s"] = model_only(predictor, chips, predictor.batch_size,
                                                   args.model_seconds)
        print(f"model-only {args.precision}: {res['model_only_chips_per_s']:.0f} chips/s", flush=True)
        save()

        res["rounds"] = []
        with connect(None, workers=1, threads=args.threads, gpu=True, dashboard_address=None) as (client, _):
            address = client.scheduler.address
            timed_run([warm], predictor, work / "warm_run")
            timed_batch([warm], predictor, address, args.device, args.precision, work / "warm_batch")
            for r in range(args.rounds):
                rnd = {}
                for how in (("run", "batch") if r % 2 == 0 else ("batch", "run")):
                    out = work / f"out_{how}_{r}"
                    rnd[how] = (timed_run(scenes, predictor, out) if how == "run" else
                                timed_batch(scenes, predictor, address, args.device, args.precision, out))
                    shutil.rmtree(out, ignore_errors=True)
                rnd["run_over_model_only"] = rnd["run"]["chips_per_s"] / res["model_only_chips_per_s"]
                rnd["batch_over_run"] = rnd["batch"]["chips_per_s"] / rnd["run"]["chips_per_s"]
                res["rounds"].append(rnd)
                print(f"round {r + 1}: run {rnd['run']['chips_per_s']:.0f} chips/s "
                      f"({rnd['run_over_model_only']:.2f} of model-only; target 0.6; the scenes waited "
                      f"{rnd['run']['write_wait_s']:.1f} s of {rnd['run']['seconds']:.1f} s for their writes), "
                      f"batch {rnd['batch']['chips_per_s']:.0f} chips/s ({rnd['batch_over_run']:.2f} of run; "
                      f"target 0.9); {rnd['run']['chips']} chips", flush=True)
                save()
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
