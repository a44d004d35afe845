"""Benchmark the scheduler at basin scale: what the job's own orchestration costs per task and per scene.

Issue 16, item 5. A real scheduler and real workers, started with the stock
``dask scheduler`` and ``dask worker`` command-line tools as subprocesses on
127.0.0.1 (free ports, no dashboards; ``--workers`` workers of 1 thread,
each with its nanny), and the job driven through the project's own path:
:func:`scenetag.jobs.batch.run_batch` with ``scheduler=`` that address, so
prepare, hash, classify strips, write and the report are the job's.

The model is a stand-in that costs nothing: a hand-built ONNX graph
(:func:`tests.model_fixtures.export_constant_model`) that returns the same
probabilities for every chip, carrying the default model's spec (17 labels,
RGB, 256 px, 3 m, percentile stretch) with TTA off, so that what is measured
is everything but the network: opening and planning the scene, the stretch,
the checksum, reading and scaling the chips, the task round trips and the
GeoPackage write of 17 label layers with their styles.

Scenes (built in a temporary folder, removed at the end): a mosaic of real
Planet Amazon chips (``chips/planet_amazon``, 256 px RGB, 3-5 m), laid edge
to edge as 8 x 8 chips (2048² px), georeferenced at 3 m (EPSG:32721), nodata
0 (a 0 pixel becomes 1). The small scenes are ``--scenes`` crops of 512² px
(4 chips of 256 px) at different offsets of the mosaic, each with its own
geotransform; the sweep scenes are the mosaic repeated to ``--sweep-side``
px and cut there, tiled as their chips (``--sweep-chip``: each chip one
tile, as 256 px chips in 256 px tiles); the small scenes are tiled 256. All
DEFLATE level 1.

Measured, in one run:

(a) **the scheduler alone**: ``--noop-tasks`` empty tasks submitted at once,
    and ``--noop-scenes`` scenes of empty tasks of the job's shape (prepare;
    then hash, classify and a write that takes the three), submitted as
    :func:`~jobs.runner.run_scenes` does, once carrying nothing and once
    carrying a real scene's plan as the job does: tasks per second, and the
    scheduler process's CPU time per task (from ``/proc``, through psutil),
    less its CPU when idle (measured first, ``--idle-seconds``);
(b) **the job on small scenes**: ``run_batch`` over the small scenes, all
    new: scenes per second, the scheduler's CPU per task, the workers' and
    this process's CPU per scene, and, from the scheduler's task stream
    (``distributed.get_task_stream``), the median time of each step on its
    worker and the idle time between tasks on a worker; then the same batch
    again, every scene up to date (skipped); the report's write alone;
    ``classify_strip`` in this process on 1 to 4 chips (the cost per task
    without Dask); and the pickled size of what the tasks carry;
(c) **chips per task**: ``run_batch`` over ``--sweep-scenes`` large scenes
    with each ``--chips-per-task`` (strips are whole rows of chips, so a
    strip holds at least one row); a 64 px stand-in (``--sweep-chip``) makes
    4096 chips of a 4096² scene, so that the per-task cost is not hidden by
    the pixels: wall time, classify tasks, and the fit ``classify task =
    a + b x chips`` over the settings' medians (``a`` is what a task costs
    besides its chips), and what each extra task adds between the settings
    with the most and the fewest tasks;
(d) **stored bytes per chip** of 256² px, for 3 x uint8 (the mosaic) and
    4 x uint16 (the real Borneo PlanetScope analytic scene, its fully valid
    tiles), uncompressed and with GDAL's usual compressions.

Usage::

    python bench/bench_scheduler.py [--scenes 600] [--workers 2] [--sweep-scenes 4] [--sweep-side 4096]
                                    [--chips-per-task 64,256,1024,4096] [--direct-to-workers]
                                    [--json out.json]

The figures (and the command) are in docs/scale.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.scenes import DATA, load_chips

#: The command-line tools of this Python's environment.
DASK = Path(sys.executable).with_name("dask")
#: Chips of the mosaic the scenes are cut from: 8 x 8 real chips.
MOSAIC_SIDE = 8
#: Pixels of a small scene (4 chips of 256 px).
SMALL = 512
#: What the stand-in model returns for every chip (labels not named: 0.02).
STAND_IN_PROBS = {"primary": 0.95, "clear": 0.9, "agriculture": 0.3, "road": 0.2}


# -------------------------------------------------------------------------------------------- the cluster


def _cpu(proc: Any) -> float:
    """CPU seconds (user + system) of a psutil process and its children, alive ones."""
    import psutil

    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


@dataclasses.dataclass
class Cluster:
    """A scheduler and workers started with the stock CLI; ``cpu()`` reads their CPU seconds."""

    address: str
    scheduler: Any  # psutil.Process
    workers: list

    def cpu(self) -> dict[str, float]:
        return {"scheduler": _cpu(self.scheduler), "workers": sum(_cpu(w) for w in self.workers),
                "client": time.process_time()}


@contextlib.contextmanager
def stock_cluster(work: Path, n_workers: int, timeout: float = 120.0) -> Iterator[Cluster]:
    """``dask scheduler`` and ``n_workers`` x ``dask worker --nthreads 1`` on 127.0.0.1, free ports."""
    import psutil

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               # The task stream keeps the last N tasks; the job's run must fit in it.
               DASK_DISTRIBUTED__SCHEDULER__DASHBOARD__STATUS__TASK_STREAM_LENGTH="400000",
               DASK_DISTRIBUTED__SCHEDULER__DASHBOARD__TASKS__TASK_STREAM_LENGTH="400000")
    sched_file = work / "scheduler.json"
    logs = work / "cluster-logs"
    logs.mkdir(exist_ok=True)
    procs: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> subprocess.Popen:
        log_file = open(logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        p = subprocess.Popen([str(DASK), *args], cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        procs.append(p)
        return p

    try:
        sched = start("scheduler", "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                      "--scheduler-file", str(sched_file))
        deadline = time.monotonic() + timeout
        while not sched_file.exists() or not sched_file.read_text().strip():
            if sched.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the scheduler did not start: see {logs / 'scheduler.log'}")
            time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        workers = [start(f"worker{i}", "worker", address, "--nthreads", "1", "--host", "127.0.0.1",
                         "--no-dashboard", "--name", f"bench-{i}", "--memory-limit", "0")
                   for i in range(n_workers)]
        from distributed import Client

        with Client(address, timeout=timeout) as client:
            client.wait_for_workers(n_workers, timeout=timeout)
        yield Cluster(address, psutil.Process(sched.pid), [psutil.Process(w.pid) for w in workers])
    finally:
        for p in reversed(procs):  # workers first, then the scheduler: only the processes started here
            if p.poll() is None:
                p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


# ------------------------------------------------------------------------------------ scenes and model


def build_mosaic(work: Path) -> tuple[np.ndarray, Any]:
    """The 8 x 8 mosaic of real Planet chips (uint8, 3 x 2048 x 2048, no 0) and its 3 m geotransform."""
    from affine import Affine

    chips = load_chips(DATA / "chips" / "planet_amazon" / "images", MOSAIC_SIDE * MOSAIC_SIDE)
    n = int(np.sqrt(len(chips)))
    size = chips.shape[-1]
    block = chips[: n * n].reshape(n, n, 3, size, size).transpose(2, 0, 3, 1, 4).reshape(3, n * size, n * size)
    block = np.where(block == 0, 1, block)  # keep 0 for nodata only
    return block, Affine(3.0, 0, 500000.0, 0, -3.0, 9000000.0)


def _profile(width: int, height: int, transform: Any, tile: int = 256) -> dict:
    return {"driver": "GTiff", "width": width, "height": height, "count": 3, "dtype": "uint8",
            "crs": "EPSG:32721", "transform": transform, "nodata": 0, "tiled": True, "blockxsize": tile,
            "blockysize": tile, "compress": "deflate", "zlevel": 1}


def small_scenes(block: np.ndarray, transform: Any, folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` crops of ``SMALL``² px of the mosaic, at random offsets, each georeferenced where it lies."""
    import rasterio
    from rasterio.windows import Window
    from rasterio.windows import transform as window_transform

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    _, h, w = block.shape
    paths = []
    for i in range(n):
        row, col = int(rng.integers(0, h - SMALL + 1)), int(rng.integers(0, w - SMALL + 1))
        win = Window(col, row, SMALL, SMALL)
        path = folder / f"crop_{i:05d}.tif"
        with rasterio.open(path, "w", **_profile(SMALL, SMALL, window_transform(win, transform))) as dst:
            dst.write(block[:, row:row + SMALL, col:col + SMALL])
        paths.append(path)
    return paths


def sweep_scenes(block: np.ndarray, transform: Any, folder: Path, n: int, side: int, tile: int) -> list[Path]:
    """``n`` scenes of ``side``² px: the mosaic repeated (and cut at ``side``), each shifted east of the one before.

    Tiled ``tile`` px, the sweep's chip size: each chip is then one tile, as 256 px chips are in
    256 px tiles, so that a strip of one chip row decodes no tile that another strip decodes too.
    """
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    folder.mkdir(parents=True, exist_ok=True)
    _, h, w = block.shape
    reps = -(-side // w)
    row = np.tile(block, (1, 1, reps))[:, :, :side]  # one row of copies, cut to the scene's width
    paths = []
    for i in range(n):
        t = Affine(transform.a, 0, transform.c + (i + 1) * side * transform.a, 0, transform.e, transform.f)
        path = folder / f"large_{i:02d}.tif"
        with rasterio.open(path, "w", **_profile(side, side, t, tile)) as dst:
            for top in range(0, side, h):
                rows = min(h, side - top)
                dst.write(row[:, :rows], window=Window(0, top, side, rows))
        paths.append(path)
    return paths


#: Compressions whose stored bytes per chip are measured: name → GDAL creation options.
COMPRESSIONS = {
    "none": {},
    "deflate-1": {"compress": "deflate", "zlevel": 1},
    "deflate-6 + predictor 2": {"compress": "deflate", "zlevel": 6, "predictor": 2},
    "lzw + predictor 2": {"compress": "lzw", "predictor": 2},
    "jpeg q90 (uint8 only)": {"compress": "jpeg", "jpeg_quality": 90, "photometric": "ycbcr"},
}


def bytes_per_chip(block: np.ndarray, transform: Any, work: Path, chip: int = 256) -> dict:
    """Stored bytes of one ``chip``² chip: 3 x uint8 (the mosaic) and 4 x uint16 (the Borneo PlanetScope scene).

    The mosaic is fully valid: its file's size over its chips. The Borneo scene
    (B, G, R, NIR analytic, 27% valid) is stored in 64 px tiles, pixel-interleaved,
    and only its fully valid tiles are counted (a nodata tile compresses to
    almost nothing), scaled to a ``chip``² chip.
    """
    import rasterio

    folder = work / "bytes"
    folder.mkdir(exist_ok=True)
    _, h, w = block.shape
    out: dict = {"3 x uint8": {}, "4 x uint16": {}}
    chips = (h // chip) * (w // chip)
    for name, opts in COMPRESSIONS.items():
        path = folder / "rgb.tif"
        profile = {k: v for k, v in _profile(w, h, transform).items() if k not in ("compress", "zlevel")}
        with rasterio.open(path, "w", **{**profile, **opts}) as dst:
            dst.write(block)
        out["3 x uint8"][name] = path.stat().st_size / chips
    with rasterio.open(DATA / "scenes" / "planetscope_borneo_3m_analytic.tif") as src:
        data, profile = src.read(), src.profile
    valid = (data != 0).any(axis=0)
    tile = 64
    n = data.shape[1] // tile
    full = [(i, j) for i in range(n) for j in range(n)
            if valid[i * tile:(i + 1) * tile, j * tile:(j + 1) * tile].all()]
    for name, opts in COMPRESSIONS.items():
        if "jpeg" in name:
            continue
        path = folder / "analytic.tif"
        with rasterio.open(path, "w", **{**profile, "tiled": True, "blockxsize": tile, "blockysize": tile,
                                         "compress": None, **opts}) as dst:
            dst.write(data)
        with rasterio.open(path) as dst:
            sizes = [dst.block_size(1, i, j) for i, j in full]
        out["4 x uint16"][name] = float(np.mean(sizes)) * (chip / tile) ** 2
    out["raw"] = {"3 x uint8": 3 * chip * chip, "4 x uint16": 4 * 2 * chip * chip}
    out["borneo_full_tiles"] = len(full)
    return out


def stand_in_model(folder: Path, chip_size: int = 256) -> tuple[Path, Any]:
    """The stand-in ONNX model (constant outputs) with the default model's spec, TTA off, at ``chip_size``."""
    from scenetag.model.backends import create_predictor
    from scenetag.model.default import DEFAULT_MODEL

    from tests.model_fixtures import export_constant_model

    spec = create_predictor(DEFAULT_MODEL, backend="onnx").spec
    spec = dataclasses.replace(spec, tta="none", chip_size=chip_size)
    probs = [STAND_IN_PROBS.get(label, 0.02) for label in spec.labels]
    path = export_constant_model(folder / f"stand_in_{chip_size}.onnx", probs, spec=spec)
    return path, create_predictor(path, backend="onnx", device="cpu")


# ---------------------------------------------------------------------------------- what is measured


def _noop(*args: Any) -> int:
    """An empty task (its arguments, the results of others, are ignored)."""
    return 0


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _stage(key: str) -> str:
    """``scenetag_classify-<id>`` → ``classify``."""
    return str(key).split("-", 1)[0].removeprefix("scenetag_")


def stream_figures(records: list[dict]) -> dict:
    """Per stage: tasks and median compute seconds; per worker: busy share and idle time between its tasks."""
    stages: dict[str, list[float]] = {}
    by_worker: dict[str, list[tuple[float, float]]] = {}
    for rec in records:
        compute = [s for s in rec.get("startstops", ()) if s.get("action") == "compute"]
        if not compute:
            continue
        start, stop = compute[0]["start"], compute[-1]["stop"]
        stages.setdefault(_stage(rec["key"]), []).append(stop - start)
        by_worker.setdefault(str(rec.get("worker")), []).append((start, stop))
    gaps, busy, span = [], 0.0, 0.0
    for spans in by_worker.values():
        spans.sort()
        busy += sum(b - a for a, b in spans)
        span += spans[-1][1] - spans[0][0]
        gaps += [max(0.0, spans[i + 1][0] - spans[i][1]) for i in range(len(spans) - 1)]
    return {
        "tasks": sum(len(v) for v in stages.values()),
        "stages": {k: {"tasks": len(v), "median_s": _median(v), "mean_s": sum(v) / len(v), "total_s": sum(v)}
                   for k, v in sorted(stages.items())},
        "worker_busy_share": busy / span if span else float("nan"),
        "gap_between_tasks_median_s": _median(gaps),
        "gap_between_tasks_mean_s": sum(gaps) / len(gaps) if gaps else float("nan"),
    }


@contextlib.contextmanager
def measured(cluster: Cluster, client: Any) -> Iterator[dict]:
    """Wall seconds, CPU seconds of scheduler, workers and this process, and the task stream of the block."""
    from distributed import get_task_stream

    out: dict = {}
    cpu0 = cluster.cpu()
    t0 = time.perf_counter()
    with get_task_stream(client=client) as ts:
        yield out
    out["wall_s"] = time.perf_counter() - t0
    cpu1 = cluster.cpu()
    out["cpu_s"] = {k: cpu1[k] - cpu0[k] for k in cpu0}
    out["stream"] = stream_figures(ts.data)


def noop_burst(cluster: Cluster, client: Any, n: int) -> dict:
    """``n`` independent empty tasks, submitted at once (one key each, as the job's tasks)."""
    from distributed import wait
    from scenetag.jobs.executors import task_key

    with measured(cluster, client) as m:
        futures = [client.submit(_noop, i, key=task_key("noop"), pure=False) for i in range(n)]
        wait(futures)
        del futures
    return _per_task(m, n)


def _echo(value: Any) -> Any:
    """An empty task that returns its argument (an empty prepare step handing back a scene's plan)."""
    return value


def noop_scenes(cluster: Cluster, client: Any, n: int, payload: Any = 0) -> dict:
    """``n`` scenes of empty tasks in the job's shape, submitted as run_scenes does: 4 tasks a scene.

    As in :func:`~jobs.runner.run_scenes`: prepare's result comes back to this process, then hash,
    classify (given that result as a value, as the job gives a strip its plan) and the write
    (the result again, and the futures of hash and classify); the write's result comes back too.
    ``payload`` is what prepare returns: 0, or a real scene's ``Prepared`` (its plan) to see what
    carrying it costs.
    """
    from distributed import as_completed
    from scenetag.jobs.executors import task_key

    def submit(stage: str, fn: Callable, *args: Any) -> Any:
        return client.submit(fn, *args, key=task_key(stage), pure=False)

    with measured(cluster, client) as m:
        pending = as_completed([submit("prepare", _echo, payload) for _ in range(n)])
        kept = []
        for fut in pending:
            value = fut.result()
            if fut.key.startswith("scenetag_prepare"):
                hashed, table = submit("hash", _noop, 0), submit("classify", _noop, value)
                pending.add(submit("write", _noop, value, hashed, table))
                kept += [hashed, table]
        del kept
    return _per_task(m, 4 * n, scenes=n)


def _per_task(m: dict, tasks: int, scenes: int | None = None) -> dict:
    m["tasks_submitted"] = tasks
    m["tasks_per_s"] = tasks / m["wall_s"]
    m["scheduler_cpu_ms_per_task"] = 1000 * m["cpu_s"]["scheduler"] / tasks
    m["client_cpu_ms_per_task"] = 1000 * m["cpu_s"]["client"] / tasks
    m["workers_cpu_ms_per_task"] = 1000 * m["cpu_s"]["workers"] / tasks
    if scenes:
        m["scenes_per_s"] = scenes / m["wall_s"]
    return m


def job(cluster: Cluster, client: Any, scenes: list[Path], out_dir: Path, predictor: Any, options: Any, *,
        chips_per_task: int, force: bool = True, floor: dict | None = None) -> dict:
    """``run_batch`` over ``scenes`` on the cluster (the project's path), measured."""
    from scenetag.jobs.batch import run_batch

    with measured(cluster, client) as m:
        report = run_batch(scenes, out_dir, predictor, options, scheduler=cluster.address, force=force,
                           retries=0, chips_per_task=chips_per_task, dashboard_address=None)
    counts = report.counts()
    if counts.get("failed"):
        raise SystemExit(f"scenes failed: {[(r.scene, r.error) for r in report.failed()][:3]}")
    n = len(scenes)
    tasks = m["stream"]["tasks"]
    m.update(scenes=n, counts=counts, chips=sum(r.chips for r in report.scenes),
             strips=sum(r.strips or 0 for r in report.scenes), scenes_per_s=n / m["wall_s"],
             tasks_per_scene=tasks / n, tasks_per_s=tasks / m["wall_s"],
             scheduler_cpu_ms_per_task=1000 * m["cpu_s"]["scheduler"] / max(tasks, 1),
             client_cpu_ms_per_scene=1000 * m["cpu_s"]["client"] / n,
             workers_cpu_ms_per_scene=1000 * m["cpu_s"]["workers"] / n)
    net_of_idle(m, floor, tasks)
    t0 = time.perf_counter()
    report.write(out_dir / "report-again.json")
    m["report_write_s"] = time.perf_counter() - t0
    return m


def idle(cluster: Cluster, seconds: float) -> dict:
    """CPU seconds per second of the scheduler and workers with no tasks (heartbeats, monitors): the floor."""
    cpu0, t0 = cluster.cpu(), time.perf_counter()
    time.sleep(seconds)
    cpu1, wall = cluster.cpu(), time.perf_counter() - t0
    return {"seconds": wall, "scheduler_cpu_per_s": (cpu1["scheduler"] - cpu0["scheduler"]) / wall,
            "workers_cpu_per_s": (cpu1["workers"] - cpu0["workers"]) / wall}


def net_of_idle(m: dict, floor: dict | None, tasks: int) -> None:
    """Add the scheduler's CPU per task less what it spends idle over the same wall time."""
    if floor is not None and tasks:
        net = m["cpu_s"]["scheduler"] - floor["scheduler_cpu_per_s"] * m["wall_s"]
        m["scheduler_cpu_ms_per_task_net"] = 1000 * max(net, 0.0) / tasks


def payloads(scene: Path, work: Path, predictor: Any, options: Any) -> tuple[dict, Any]:
    """Pickled bytes of what travels between the client, the scheduler and the workers for one small scene.

    A classify task and the write carry the scene's :class:`~jobs.planning.ScenePlan` (in the
    ``Prepared`` the client got back from prepare); the write gets the strips' chip tables from
    their workers and sends a :class:`~jobs.scene_job.SceneResult` back.  Returns the sizes and
    the ``Prepared``.
    """
    import cloudpickle
    from scenetag.jobs.models import LocalModel, ShippedModel
    from scenetag.jobs.scene_job import (
        classify_strip,
        hash_scene,
        prepare_scene,
        write_scene,
    )

    model = LocalModel(predictor)
    prep = prepare_scene(str(scene), str(work / "payload.gpkg"), model, options, False, True)
    table = classify_strip(prep.plan, None, model)
    result = write_scene(prep, model, hash_scene(str(scene)), table)
    shipped = ShippedModel(model.path, model.sha256, model.spec)
    sizes = {name: len(cloudpickle.dumps(obj)) for name, obj in
             {"prepared (plan)": prep, "model (shipped)": shipped, "options": options,
              "chip table (4 chips)": table, "scene result": result}.items()}
    return sizes, prep


def fit_line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares ``y = a + b x`` on relative errors (the settings span 64x in x); returns ``(a, b)``."""
    x, y = np.array([p[0] for p in points], float), np.array([p[1] for p in points], float)
    b, a = np.polyfit(x, y, 1, w=1 / y) if len(points) > 1 else (y[0] / x[0], 0.0)
    return float(a), float(b)


def classify_in_process(scene: Path, work: Path, predictor: Any, options: Any, rounds: int = 5) -> dict:
    """``classify_strip`` in this process on 1 to 4 chips of a small scene: median seconds, and the fit.

    No scheduler and no worker: what a classify task of the job costs by itself (open the scene,
    start the reader threads, read, scale, predict), and how much of it is per task.
    """
    from scenetag.jobs.models import LocalModel
    from scenetag.jobs.scene_job import classify_strip, prepare_scene

    model = LocalModel(predictor)
    plan = prepare_scene(str(scene), str(work / "in_process.gpkg"), model, options, False, True).plan
    cells = list(plan.grid)
    times: dict[int, list[float]] = {k: [] for k in range(1, len(cells) + 1)}
    classify_strip(plan, cells[:1], model)  # warm: the predictor's session, GDAL's drivers
    for _ in range(rounds):
        for k, seconds in times.items():
            t0 = time.perf_counter()
            classify_strip(plan, cells[:k], model)
            seconds.append(time.perf_counter() - t0)
    med = {k: _median(v) for k, v in times.items()}
    a, b = fit_line(list(med.items()))
    return {"median_s": med, "per_task_s": a, "per_chip_s": b}


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenes", type=int, default=600,
                    help="small scenes (512² px, 4 chips of 256 px) for the job; 0 leaves the job out")
    ap.add_argument("--direct-to-workers", action="store_true",
                    help="clients (this one's and run_batch's) fetch results from the workers, not through the "
                         "scheduler (dask's distributed.client.direct-to-workers)")
    ap.add_argument("--workers", type=int, default=2, help="dask worker processes, 1 thread each")
    ap.add_argument("--noop-tasks", type=int, default=4000, help="empty tasks submitted at once")
    ap.add_argument("--noop-scenes", type=int, default=2000, help="scenes of empty tasks in the job's shape")
    ap.add_argument("--sweep-scenes", type=int, default=4, help="large scenes for the chips-per-task sweep")
    ap.add_argument("--sweep-side", type=int, default=4096, help="pixels on a side of a large scene")
    ap.add_argument("--sweep-chip", type=int, default=64, help="chip size of the sweep's stand-in model")
    ap.add_argument("--chips-per-task", default="64,256,1024,4096", help="settings of the sweep, comma-separated")
    ap.add_argument("--no-skip-pass", action="store_true", help="leave out the batch again over up-to-date scenes")
    ap.add_argument("--idle-seconds", type=float, default=10.0,
                    help="seconds of an idle cluster, the scheduler's floor of CPU a second (0: not measured)")
    ap.add_argument("--no-bytes", action="store_true", help="leave out the stored bytes per chip")
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--work", default=None, help="build the scenes here (default: a temporary folder, removed)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("scenetag").setLevel(logging.ERROR)
    logging.getLogger("distributed").setLevel(logging.ERROR)

    import cloudpickle
    from distributed import Client
    from scenetag.jobs.options import RunOptions

    if args.direct_to_workers:
        import dask

        dask.config.set({"distributed.client.direct-to-workers": True})
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_scheduler_"))
    work.mkdir(parents=True, exist_ok=True)
    settings = [int(s) for s in args.chips_per_task.split(",") if s.strip()]
    figures: dict = {"command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
                     "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     "machine": f"{platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}",
                     "load_average_start": os.getloadavg(), "workers": args.workers, "threads_per_worker": 1,
                     "direct_to_workers": args.direct_to_workers}
    say: Callable[[str], None] = lambda s: print(s, flush=True)
    try:
        t0 = time.perf_counter()
        block, transform = build_mosaic(work)
        small = small_scenes(block, transform, work / "small", max(args.scenes, 1))  # 1: for the payloads
        large = sweep_scenes(block, transform, work / "large", args.sweep_scenes, args.sweep_side,
                             args.sweep_chip) \
            if args.sweep_scenes and settings else []
        predictor = stand_in_model(work)[1]
        sweep_model = stand_in_model(work, args.sweep_chip)[1] if large else None
        say(f"built {len(small)} small scenes and {len(large)} large ones in {time.perf_counter() - t0:.1f} s "
            f"({work})")
        figures["small_scene_bytes_mean"] = sum(p.stat().st_size for p in small) / max(len(small), 1)
        figures["large_scene_bytes_mean"] = sum(p.stat().st_size for p in large) / max(len(large), 1)
        options = RunOptions()
        if not args.no_bytes:
            b = figures["bytes_per_chip"] = bytes_per_chip(block, transform, work)
            for kind in ("3 x uint8", "4 x uint16"):
                say(f"(d) stored bytes per 256² chip, {kind} (raw {b['raw'][kind] / 1000:.1f} kB): " + ", ".join(
                    f"{k} {v / 1000:.1f} kB" for k, v in b[kind].items()))
        pay, prepared = payloads(small[0], work, predictor, options)
        figures["payload_bytes"] = pay
        say("pickled bytes: " + ", ".join(f"{k} {v / 1000:.1f} kB" for k, v in pay.items()))
        c = figures["classify_in_process"] = classify_in_process(small[0], work, predictor, options)
        say("(b) classify_strip in this process: " + ", ".join(
            f"{k} chip{'s' if k > 1 else ''} {1000 * v:.0f} ms" for k, v in c["median_s"].items())
            + f" (median): {1000 * c['per_task_s']:.0f} ms a task + {1000 * c['per_chip_s']:.1f} ms a 256 px chip")
        with stock_cluster(work, args.workers) as cluster, Client(cluster.address) as client:
            say(f"cluster: {cluster.address}, {args.workers} workers x 1 thread (dask scheduler / dask worker)")
            say(f"load average at the start: {os.getloadavg()[0]:.2f}")
            client.submit(_noop, 0, pure=False).result()  # the workers have imported what a task needs
            floor = figures["idle"] = idle(cluster, args.idle_seconds) if args.idle_seconds else None
            if floor:
                say(f"idle: scheduler {1000 * floor['scheduler_cpu_per_s']:.1f} ms CPU a second, workers "
                    f"{1000 * floor['workers_cpu_per_s']:.1f}")

            if args.noop_tasks:
                r = figures["noop_burst"] = noop_burst(cluster, client, args.noop_tasks)
                net_of_idle(r, floor, args.noop_tasks)
                say(f"(a) {args.noop_tasks} empty tasks at once: {r['tasks_per_s']:.0f} tasks/s; scheduler CPU "
                    f"{r['scheduler_cpu_ms_per_task']:.2f} ms/task "
                    f"({r.get('scheduler_cpu_ms_per_task_net', float('nan')):.2f} net of idle), workers {r['workers_cpu_ms_per_task']:.2f}, "
                    f"client {r['client_cpu_ms_per_task']:.2f}")
            if args.noop_scenes:
                r = figures["noop_scenes"] = noop_scenes(cluster, client, args.noop_scenes)
                net_of_idle(r, floor, 4 * args.noop_scenes)
                say(f"(a) {args.noop_scenes} scenes of empty tasks (4 each): {r['tasks_per_s']:.0f} tasks/s, "
                    f"{r['scenes_per_s']:.1f} scenes/s; scheduler CPU {r['scheduler_cpu_ms_per_task']:.2f} ms/task, "
                    f"client {r['client_cpu_ms_per_task']:.2f}; gap between tasks on a worker "
                    f"{1000 * r['stream']['gap_between_tasks_median_s']:.2f} ms (median)")

            if args.noop_scenes:
                r = figures["noop_scenes_payload"] = noop_scenes(cluster, client, args.noop_scenes, prepared)
                net_of_idle(r, floor, 4 * args.noop_scenes)
                say(f"(a) the same, prepare handing back a real scene's plan ({len(cloudpickle.dumps(prepared)) / 1000:.1f} "
                    f"kB pickled): {r['tasks_per_s']:.0f} tasks/s; scheduler CPU {r['scheduler_cpu_ms_per_task']:.2f} "
                    f"ms/task ({r.get('scheduler_cpu_ms_per_task_net', float('nan')):.2f} net of idle), "
                    f"client {r['client_cpu_ms_per_task']:.2f}")

            if args.scenes:
                r = figures["job_small"] = job(cluster, client, small, work / "out_small", predictor, options,
                                               chips_per_task=256, floor=floor)
                st = r["stream"]["stages"]
                say(f"(b) batch, {len(small)} new scenes: {r['wall_s']:.1f} s, {r['scenes_per_s']:.2f} scenes/s, "
                    f"{r['tasks_per_s']:.0f} tasks/s ({r['tasks_per_scene']:.1f} a scene); scheduler CPU "
                    f"{r['scheduler_cpu_ms_per_task']:.2f} ms/task ({r.get('scheduler_cpu_ms_per_task_net', float('nan')):.2f} "
                    f"net of idle); workers {r['workers_cpu_ms_per_scene']:.0f} ms CPU "
                    f"a scene, client {r['client_cpu_ms_per_scene']:.1f}; busy {r['stream']['worker_busy_share']:.0%}, "
                    f"gap {1000 * r['stream']['gap_between_tasks_median_s']:.2f} ms (median)")
                say("    median on a worker: " + ", ".join(f"{k} {1000 * v['median_s']:.1f} ms" for k, v in st.items())
                    + f"; report write {1000 * r['report_write_s']:.0f} ms")
                if not args.no_skip_pass:
                    r = figures["job_small_skipped"] = job(cluster, client, small, work / "out_small", predictor,
                                                           options, chips_per_task=256, force=False, floor=floor)
                    say(f"(b) batch again, {len(small)} scenes up to date: {r['wall_s']:.1f} s, "
                        f"{r['scenes_per_s']:.1f} scenes/s; prepare (the skip check) "
                        f"{1000 * r['stream']['stages'].get('prepare', {}).get('median_s', float('nan')):.1f} ms median")
                shutil.rmtree(work / "out_small", ignore_errors=True)

            sweep = figures["sweep"] = {"chip_size": args.sweep_chip, "scene_px": args.sweep_side,
                                        "scenes": len(large), "settings": {}}
            for cpt in settings if large else []:
                out = work / f"out_large_{cpt}"
                r = job(cluster, client, large, out, sweep_model, options, chips_per_task=cpt, floor=floor)
                shutil.rmtree(out, ignore_errors=True)
                cls = r["stream"]["stages"].get("classify", {})
                r["chips_per_strip"] = r["chips"] / max(r["strips"], 1)
                r["chips_per_s"] = r["chips"] / r["wall_s"]
                sweep["settings"][cpt] = r
                say(f"(c) chips per task {cpt:5d}: {r['strips']:4d} classify tasks ({r['chips_per_strip']:.0f} chips "
                    f"each), {r['wall_s']:.1f} s, {r['chips_per_s']:.0f} chips/s; classify task median "
                    f"{1000 * cls.get('median_s', float('nan')):.0f} ms; scheduler CPU "
                    f"{1000 * r['cpu_s']['scheduler']:.0f} ms in all")
            if len(sweep["settings"]) > 1:
                pts = [(r["chips_per_strip"], r["stream"]["stages"]["classify"]["median_s"])
                       for r in sweep["settings"].values()]
                a, b = fit_line(pts)
                sweep["classify_fit"] = {"per_task_s": a, "per_chip_s": b}
                many, few = sweep["settings"][min(settings)], sweep["settings"][max(settings)]
                extra = many["strips"] - few["strips"]
                if extra:
                    # What each extra task adds to the job: classify time on the workers, and the wall.
                    sweep["extra_classify_s_per_task"] = (
                        many["stream"]["stages"]["classify"]["total_s"]
                        - few["stream"]["stages"]["classify"]["total_s"]) / extra
                    sweep["extra_wall_s_per_task"] = (many["wall_s"] - few["wall_s"]) * args.workers / extra
                    say(f"(c) each extra classify task ({max(settings)} → {min(settings)} chips per task): "
                        f"{1000 * sweep['extra_classify_s_per_task']:.0f} ms of classify time on a worker, "
                        f"{1000 * sweep['extra_wall_s_per_task']:.0f} ms of worker wall")
                say(f"(c) classify task = {1000 * a:.1f} ms + {1000 * b:.3f} ms x chips "
                    f"({args.sweep_chip} px chips, stand-in model)")
        figures["load_average_end"] = os.getloadavg()
        say(f"load average at the end: {figures['load_average_end'][0]:.2f}")
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2, default=str))
        return figures
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
