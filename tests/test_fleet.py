"""Reader processes inside Dask workers started by the stock ``dask`` command line, and the reader pool.

A scheduler and two workers run as the docs say to start them
(``dask scheduler``, ``dask worker`` with ``DASK_DISTRIBUTED__WORKER__DAEMON=False``),
on 127.0.0.1 with free ports, as subprocesses killed at teardown.  The
readers are forced (``--reader processes``: there is no GPU here).  Nothing
is mocked: real scenes, the tiny ONNX model, worker processes that really die.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from distributed import Client

from scenetag.jobs.batch import run_batch
from scenetag.jobs.classify import classify_cells
from scenetag.jobs.options import RunOptions
from scenetag.jobs.planning import plan_scene
from scenetag.jobs.runner import run_scene
from scenetag.model.backends import create_predictor
from scenetag.tiler.feed import ProcessFeed
from scenetag.tiler.reader_pool import ReaderPool, pool_state, shared_pool
from tests.cli_helpers import alive, children_of, descendants
from tests.conftest import ROOT
from tests.test_jobs_batch import assert_same_chips
from tests.tiler_rasters import holey_scene, reader_for, spec

SCENES = ("landsat7_rgb_byte.tif", "drone_rgba_alpha.tif", "landsat8_rgb16.tif", "planetscope_3m_epsg4326.tif")
#: Small enough that the larger scenes are split into several strips.
CHIPS_PER_TASK = 40
PROCESSES = RunOptions(reader="processes", readers=2)
SHM = Path("/dev/shm")


@dataclass
class CliCluster:
    address: str
    scheduler: subprocess.Popen
    nannies: list[subprocess.Popen]

    def worker_pids(self) -> list[int]:
        """The worker processes (each ``dask worker`` is a nanny; its worker is its child)."""
        return [pid for n in self.nannies for pid in children_of(n.pid)
                if "forkserver" not in _cmdline(pid) and "resource_tracker" not in _cmdline(pid)]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _dask(*args: str, env: dict, log: Path) -> subprocess.Popen:
    dask = Path(sys.executable).parent / "dask"
    return subprocess.Popen([str(dask), *args], env=env, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.time() + 20
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)


@pytest.fixture(scope="module")
def cli_cluster(tmp_path_factory):
    """``dask scheduler`` and two ``dask worker`` processes (non-daemonic workers, as docs/batch.md says)."""
    folder = tmp_path_factory.mktemp("dask-cli")
    env = dict(os.environ, PYTHONPATH=str(ROOT), DASK_DISTRIBUTED__WORKER__DAEMON="False")
    file = folder / "scheduler.json"
    scheduler = _dask("scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                      "--scheduler-file", str(file), env=env, log=folder / "scheduler.log")
    nannies: list[subprocess.Popen] = []
    try:
        deadline = time.time() + 60
        while not file.exists() and time.time() < deadline and scheduler.poll() is None:
            time.sleep(0.1)
        assert file.exists(), (folder / "scheduler.log").read_text()
        address = json.loads(file.read_text())["address"]
        # GPU workers as docs/batch.md starts them (the GPU declared, not real: Dask schedules by it).
        nannies = [_dask("worker", address, "--host", "127.0.0.1", "--nthreads", "1", "--no-dashboard",
                         "--resources", "GPU=1", "--name", f"w{i}", env=env, log=folder / f"worker{i}.log")
                   for i in range(2)]
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=90)
        cluster = CliCluster(address, scheduler, nannies)
        yield cluster
        # Stopped as a user stops them (SIGTERM): each worker closes its reader pool on the way out.
        workers = cluster.worker_pids()
        tree = [pid for w in workers for pid in descendants(w)] + workers
        _stop([*nannies, scheduler])
        deadline = time.time() + 10
        while (alive(tree) or _blocks_of(workers)) and time.time() < deadline:
            time.sleep(0.2)
        assert alive(tree) == [] and _blocks_of(workers) == []
    finally:
        _stop([*nannies, scheduler])


@pytest.fixture(scope="module")
def reference(scenes_dir, predictor, tmp_path_factory):
    """``run`` (in this process) on each scene."""
    folder = tmp_path_factory.mktemp("run")
    return {name: Path(run_scene(scenes_dir / name, folder / name.replace(".tif", ".gpkg"), predictor,
                                 PROCESSES).output) for name in SCENES}


def _worker_pools(address: str) -> dict:
    with Client(address, timeout=30) as client:
        return client.run(pool_state)


def _blocks_of(pids) -> list[str]:
    return sorted(p.name for pid in pids for p in SHM.glob(f"scenetag_{pid}_*"))


@pytest.mark.slow
def test_batch_on_dask_cli_workers_reads_with_processes_and_matches_run(cli_cluster, scenes_dir, reference,
                                                                        predictor, tmp_path, monkeypatch):
    import scenetag.jobs.executors as executors
    import scenetag.outputs_schema.stream as stream

    monkeypatch.setattr(stream, "PART_ROWS", CHIPS_PER_TASK)  # the chips layers streamed by part tasks too
    stages: list[str] = []
    key = executors.task_key
    monkeypatch.setattr(executors, "task_key", lambda stage: stages.append(stage) or key(stage))
    out = tmp_path / "out"
    report = run_batch([scenes_dir], out, predictor, PROCESSES, scheduler=cli_cluster.address,
                       chips_per_task=CHIPS_PER_TASK)
    assert report.succeeded and {s.status for s in report.scenes} == {"ok"}
    assert sum(s.strips for s in report.scenes) > 2 * len(SCENES)  # many classify tasks per worker
    assert stages.count("stream") >= 2  # and chips layers written by part tasks (scenes of several parts)
    for name in SCENES:
        assert_same_chips(out / name.replace(".tif", ".gpkg"), reference[name])
    pools = _worker_pools(cli_cluster.address)
    assert set(pools) and all(state["pid"] in cli_cluster.worker_pids() for state in pools.values())
    used = [state for state in pools.values() if state["starts"]]
    assert used, pools  # the workers read with processes, not threads
    for state in used:
        # One start per worker for all its strips and scenes: its readers are still the same processes.
        assert state["starts"] == 1 and len(state["readers"]) == PROCESSES.readers, pools
        assert set(state["readers"]) <= set(descendants(state["pid"]))  # the readers are the worker's


@pytest.mark.slow
def test_a_worker_killed_while_its_readers_run_leaves_nothing_and_the_batch_completes(
        cli_cluster, scenes_dir, reference, predictor, make_raster, tmp_path):
    # Long enough that the kill lands while the readers read (a few thousand chips).
    big = [make_raster(f"big{i}.tif", width=2400, height=2400, seed=i) for i in range(2)]
    inputs = [*big, *(scenes_dir / n for n in SCENES[:2])]
    out = tmp_path / "out"
    result: dict = {}

    def batch() -> None:
        try:
            result["report"] = run_batch(inputs, out, predictor, PROCESSES, scheduler=cli_cluster.address,
                                         chips_per_task=400, retries=2)
        except BaseException as exc:  # noqa: BLE001 - re-raised on the test's thread
            result["error"] = exc

    thread = threading.Thread(target=batch)
    thread.start()
    victim, tree = None, []
    deadline = time.time() + 120
    while victim is None and time.time() < deadline and thread.is_alive():
        for pid in cli_cluster.worker_pids():
            readers = [p for k in children_of(pid) if "forkserver" in _cmdline(k) for p in children_of(k)]
            if len(readers) >= PROCESSES.readers and _blocks_of([pid]):
                victim, tree = pid, descendants(pid)
                break
        time.sleep(0.05)
    assert victim is not None, "no worker ran reader processes while the batch ran: the test proved nothing"
    os.kill(victim, signal.SIGKILL)
    thread.join(timeout=300)
    assert not thread.is_alive()
    if "error" in result:
        raise result["error"]
    report = result["report"]
    assert report.succeeded and {s.status for s in report.scenes} == {"ok"}, [s.error for s in report.scenes]
    for name in SCENES[:2]:
        assert_same_chips(out / name.replace(".tif", ".gpkg"), reference[name])
    deadline = time.time() + 15
    while (alive(tree) or _blocks_of([victim])) and time.time() < deadline:
        time.sleep(0.2)
    assert alive(tree) == []  # its readers, fork server and resource tracker died with it
    assert _blocks_of([victim]) == []  # and its shared memory is gone
    assert not list(out.glob(".*.tmp.*"))
    with Client(cli_cluster.address, timeout=30) as client:
        client.wait_for_workers(2, timeout=90)  # its nanny started a new worker
    assert victim not in cli_cluster.worker_pids()


def test_the_pool_is_reused_from_one_scene_to_the_next(make_raster, tiny_model, tmp_path):
    """``run`` twice in one process: the second scene reads with the first one's reader processes."""
    predictor = create_predictor(tiny_model)
    first = run_scene(make_raster("one.tif", width=700, height=500, seed=1), tmp_path / "one.gpkg", predictor,
                      PROCESSES)
    pool = shared_pool(PROCESSES.readers)
    pids, starts = pool.reader_pids(), pool.starts
    assert len(pids) == PROCESSES.readers and first.timings["readers"] == PROCESSES.readers
    second = run_scene(make_raster("two.tif", width=600, height=640, seed=2), tmp_path / "two.gpkg", predictor,
                       PROCESSES)
    assert second.n_chips_classified > 0
    assert pool.reader_pids() == pids and pool.starts == starts  # no new reader process
    assert shared_pool(PROCESSES.readers) is pool


def test_a_pool_grows_its_slots_for_larger_chips_and_keeps_its_readers(make_raster):
    """A feed needing larger slots than any before gets a new block; the readers attach to it by name."""
    path = holey_scene(make_raster)
    small, small_grid = reader_for(path, spec(chip_size=32))
    large, large_grid = reader_for(path, spec(chip_size=64))
    with ReaderPool(workers=2) as pool:
        results = []
        for reader, grid in ((small, small_grid), (large, large_grid), (small, small_grid)):
            cells = list(grid)
            with ProcessFeed(reader, cells, per_run=4, slots=3, pool=pool) as feed:
                for run in feed:
                    for i, cell in enumerate(run.cells):
                        if i in run.kept.tolist():
                            np.testing.assert_array_equal(run.pixels[run.kept.tolist().index(i)],
                                                          reader.read(cell).pixels[0])
                    run.release()
            results.append((pool.reader_pids(), pool.shm_name, pool.slot_bytes))
        (pids0, name0, bytes0), (pids1, name1, bytes1), (pids2, name2, bytes2) = results
        assert len(pids0) == 2 and pids0 == pids1 == pids2 and pool.starts == 1
        assert bytes1 == 4 * 3 * 64 * 64 > bytes0 and name1 != name0  # grown for the larger chips...
        assert (name2, bytes2) == (name1, bytes1)  # ...and kept for smaller ones
        assert not (SHM / name0).exists() and (SHM / name1).exists()
    assert not (SHM / name1).exists()


def test_a_feed_finds_the_pool_busy_and_reads_with_its_own(make_raster):
    path = holey_scene(make_raster)
    reader, grid = reader_for(path, spec())
    cells = list(grid)
    with ReaderPool(workers=1) as pool:
        with ProcessFeed(reader, cells, slots=2, pool=pool) as a, ProcessFeed(reader, cells, slots=2, pool=pool) as b:
            assert a.pool is pool and b.pool is not pool
            for feed in (a, b):
                n = 0
                for run in feed:
                    n += len(run.cells)
                    run.release()
                assert n == len(cells)
        own = b.pool
        assert own.closed and pool.try_lend()  # the feed's own pool went with it; the shared one is free
        pool.give_back()


class _GpuLike:
    """The tiny model, saying it runs on a GPU (what ``auto`` looks at); it classifies on the CPU."""

    device, on_gpu = "cuda:0", True

    def __init__(self, inner) -> None:
        self.inner, self.spec, self.batch_size = inner, inner.spec, inner.batch_size

    def predict(self, chips):
        return self.inner.predict(chips)


def test_small_strips_of_a_large_scene_read_with_processes_for_a_gpu(make_raster, tiny_model):
    """``auto`` judges the scene, not the strip: a GPU worker's strips of a large scene use the reader pool."""
    inner = create_predictor(tiny_model)
    plan = plan_scene(make_raster("wide.tif", width=1600, height=800), inner.spec, RunOptions(readers=2))
    strip = plan.grid.strips(1)[0]
    assert len(strip) < 256 <= len(plan.grid)  # below PROCESS_MIN_CELLS on its own
    table = classify_cells(plan, _GpuLike(inner), cells=strip)
    assert table.extra.get("timings", {}).get("readers") == 2, "the strip was read with threads"
    assert len(table) == len(strip)


def test_batch_names_daemonic_workers_once_and_our_local_cluster_has_none(caplog):
    """Stock workers are daemonic (Dask's default): the batch says so once, with the cost and the fix."""
    import logging

    from distributed import LocalCluster

    from scenetag.jobs.cluster import connect, describe, thread_reader_workers, warn_thread_readers

    with connect(workers=1, dashboard_address="127.0.0.1:0") as (client, info):
        assert info.n_workers == 1 and thread_reader_workers(client) == 0  # ours may start readers
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as stock, \
            Client(stock) as client:
        info = describe(client)
        assert thread_reader_workers(client) == 2
        with caplog.at_level(logging.WARNING, logger="scenetag.jobs.cluster"):
            assert warn_thread_readers(client, info, "auto", "cpu", None) is None  # threads were meant anyway
            assert warn_thread_readers(client, info, "auto", "auto", {"GPU": 1}) is not None
            message = warn_thread_readers(client, info, "processes", "cpu", None)
    assert message.startswith("2 of the 2 Dask workers") and "chips/s" in message
    assert "DASK_DISTRIBUTED__WORKER__DAEMON=False" in message
    assert caplog.text.count("may not start reader processes") == 2
