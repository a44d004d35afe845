"""The streamed write: the chips layer written while the scene is classified gives the file the write at the end
gives, and stays atomic (an error or a kill leaves no output and replaces none)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyogrio
import pytest
from affine import Affine
from rasterio.crs import CRS
from distributed import SchedulerPlugin, WorkerPlugin

import scenetag.jobs.runner as runner
import scenetag.outputs_schema.stream as stream
from scenetag.atomic import TMP_GLOB, discard, temporary_name
from scenetag.jobs.options import RunOptions
from scenetag.jobs.runner import run_scene
from scenetag.jobs.sweep import sweep_leftovers
from scenetag.outputs_schema.geopackage import GeoPackageWriter, write_geopackage
from scenetag.outputs_schema.records import ChipTable
from tests.conftest import real_scene
from tests.golden import VOLATILE_OPTIONS, VOLATILE_RUN_FIELDS
from tests.model_fixtures import tiny_spec
from tests.qgis_fixtures import fake_run
from tests.tiler_rasters import holey_scene

ROOT = Path(__file__).resolve().parents[1]


def contents(path: Path) -> dict:
    """Everything a user sees of a GeoPackage but its times and ids: every layer's rows by fid (fields and
    geometry as WKB), the QGIS styles, the tables, and the runs row without the volatile fields."""
    out: dict = {"layers": [list(x) for x in pyogrio.list_layers(path)]}
    for name, _ in out["layers"]:
        if name == "layer_styles":  # below, without its update times
            continue
        frame = pyogrio.read_dataframe(path, layer=name, fid_as_index=True)
        if name == "runs":
            row = frame.iloc[0].to_dict()
            options = json.loads(row["options"])
            for key in VOLATILE_OPTIONS:
                options.pop(key, None)
            row["options"] = options
            out[name] = {k: v for k, v in row.items() if k not in VOLATILE_RUN_FIELDS | {"signature"}}
            continue
        values = {c: list(frame[c]) for c in frame.columns if c != "geometry"}
        geoms = [None if g is None else g.wkb for g in frame.geometry] if "geometry" in frame else []
        out[name] = {"fid": list(frame.index), "values": values, "geometry": geoms}
    con = sqlite3.connect(str(path))
    try:
        out["tables"] = sorted(r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'"))
        out["styles"] = con.execute("SELECT f_table_name, styleName, styleQML, styleSLD, useAsDefault, description "
                                    "FROM layer_styles ORDER BY id").fetchall()
        out["rtree_chips"] = con.execute('SELECT count(*) FROM "rtree_chips_geom"').fetchone()[0]
    finally:
        con.close()
    return out


@pytest.fixture
def small_parts(monkeypatch):
    """Parts of a few chips, so that small scenes stream many parts; counts the parts appended while classifying."""
    monkeypatch.setattr(stream, "PART_ROWS", 5)
    monkeypatch.setattr(stream, "REORDER_WINDOW", 7)
    parts: list[int] = []
    real = GeoPackageWriter.append

    def append(self, table):
        parts.append(len(table))
        return real(self, table)

    monkeypatch.setattr(GeoPackageWriter, "append", append)
    return parts


@pytest.fixture(scope="module")
def predictor(tiny_model):
    from scenetag.model.backends import create_predictor

    return create_predictor(tiny_model, backend="onnx")


def both_ways(scene, tmp_path, predictor, monkeypatch, options: RunOptions) -> tuple[dict, dict]:
    """The scene's GeoPackage with the streamed write, and with the write at the end."""
    streamed = run_scene(str(scene), str(tmp_path / "streamed.gpkg"), predictor, options)
    monkeypatch.setattr(runner, "STREAMED_WRITE", False)
    at_end = run_scene(str(scene), str(tmp_path / "at_end.gpkg"), predictor, options)
    assert streamed.n_chips_classified == at_end.n_chips_classified > 0
    return contents(Path(streamed.output)), contents(Path(at_end.output))


@pytest.mark.parametrize("options", [RunOptions(batch_size=4),
                                     RunOptions(batch_size=3, stride=32, edge="pad", min_valid=0.2,
                                                to_crs="EPSG:4326", raster=True)],
                         ids=["default", "overlap_pad_4326_raster"])
def test_streamed_write_equals_the_write_at_the_end_on_a_generated_scene(make_raster, predictor, tmp_path,
                                                                         monkeypatch, small_parts, options):
    scene = holey_scene(make_raster, width=640, height=400)  # nodata cells are skipped: gaps in the grid
    streamed, at_end = both_ways(scene, tmp_path, predictor, monkeypatch, options)
    n_streamed = len(small_parts)
    assert n_streamed > 3  # the chips went out in parts
    assert streamed == at_end


@pytest.mark.parametrize("name, bands", [("landsat7_rgb_byte.tif", None),
                                         ("planetscope_borneo_3m_analytic.tif", (3, 2, 1))])
def test_streamed_write_equals_the_write_at_the_end_on_real_scenes(name, bands, predictor, tmp_path, monkeypatch,
                                                                   small_parts):
    scene = real_scene(name)
    streamed, at_end = both_ways(scene, tmp_path, predictor, monkeypatch, RunOptions(bands=bands, batch_size=8))
    assert len(small_parts) > 3
    assert streamed == at_end


def synthetic(rows: int, cols: int, n_labels: int, seed: int = 0) -> ChipTable:
    """A grid of 64 px chips with about a fifth of its cells missing (skipped), probabilities at random."""
    rng = np.random.default_rng(seed)
    r, c = np.divmod(np.arange(rows * cols), cols)
    keep = rng.random(rows * cols) > 0.2
    r, c = r[keep].astype(np.int32), c[keep].astype(np.int32)
    n = len(r)
    return ChipTable(r, c, c * 64, r * 64, np.full(n, 64, np.int32), np.full(n, 64, np.int32),
                     rng.random(n).astype(np.float32), rng.random((n, n_labels)).astype(np.float32))


def synthetic_scene() -> tuple[ChipTable, dict]:
    """A :func:`synthetic` table of 12 x 17 chips and where it lies, as :class:`GeoPackageWriter` takes it."""
    spec = tiny_spec()
    where = dict(spec=spec, scene_id="s", transform=Affine(10, 0, 500000, 0, -10, 4000000),
                 crs=CRS.from_epsg(32633), stride=64)
    return synthetic(12, 17, spec.n_labels), where


def batches_out_of_order(table: ChipTable, size: int, seed: int = 1) -> list[ChipTable]:
    """``table`` in batches whose rows come out of grid order, runs a few apart (as from reader processes)."""
    rng = np.random.default_rng(seed)
    order = np.argsort(np.arange(len(table)) + rng.integers(0, 3 * size, len(table)), kind="stable")
    return [stream._take(table, order[i:i + size]) for i in range(0, len(order), size)]


@pytest.mark.parametrize("window, rewrites", [(64, False), (0, True)])
def test_batches_out_of_grid_order_give_the_file_of_the_write_at_the_end(tmp_path, caplog, window, rewrites):
    """Within the window they are put back in order as they stream; later than it, the layer is written again."""
    table, where = synthetic_scene()
    expected = write_geopackage(tmp_path / "at_end.gpkg", table=table, run=fake_run(), **where)
    chips = stream.ChipStream(lambda: GeoPackageWriter(tmp_path / "streamed.gpkg", **where), n_cols=17,
                              part_rows=16, window=window)
    batches = batches_out_of_order(table, 8)
    assert any(np.any(np.diff(stream.grid_keys(b, 17)) < 0) for b in batches)  # really out of order
    for batch in batches:
        chips.add(batch)
    with caplog.at_level("INFO", logger=stream.__name__):
        written = chips.finish(table, fake_run())
    assert ("out of order" in caplog.text) == rewrites
    assert contents(tmp_path / "streamed.gpkg") == contents(tmp_path / "at_end.gpkg")
    assert written.seconds_write > 0 and expected.seconds_write > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["at_end.gpkg", "streamed.gpkg"]


def test_part_groups_take_consecutive_strips_of_at_least_part_rows_cells():
    assert stream.part_groups([20, 20, 20, 20, 10], part_rows=40) == [range(0, 2), range(2, 4), range(4, 5)]
    assert stream.part_groups([50, 10, 35], part_rows=40) == [range(0, 1), range(1, 3)]
    assert stream.part_groups([10, 10], part_rows=40) == [range(0, 2)]
    assert stream.part_groups([], part_rows=40) == []


def _parted(tmp_path):
    """A scene's table, its strips (2 chip rows each), and writers as part tasks in other processes make them."""
    table, where = synthetic_scene()
    strips = [stream._take(table, np.flatnonzero((table.row >= r) & (table.row < r + 2))) for r in range(0, 12, 2)]
    start = stream.WrittenParts(str(temporary_name(tmp_path / "parted.gpkg")))

    def writer():  # a new one for every part: nothing is shared but the file and what the chain passes on
        return GeoPackageWriter(tmp_path / "parted.gpkg", tmp=start.tmp, **where)

    def finish(parts):
        chips = stream.ChipStream(writer, n_cols=17)
        chips.continuing(parts, strips)
        return chips.finish(table, fake_run())

    write_geopackage(tmp_path / "at_end.gpkg", table=table, run=fake_run(), **where)
    return table, strips, start, writer, finish, where["spec"].n_labels


def test_parts_written_by_separate_writers_give_the_file_of_the_write_at_the_end(tmp_path, caplog):
    table, strips, parts, writer, finish, n_labels = _parted(tmp_path)
    for i in range(0, 4, 2):  # two parts of two strips; the write takes the last two
        parts = stream.append_part(writer(), parts, strips[i:i + 2], n_labels)
    assert parts.ok and parts.n_tables == 4 and parts.n_chips == sum(len(t) for t in strips[:4])
    assert writer().written() == parts.n_chips
    with caplog.at_level("INFO", logger=stream.__name__):
        written = finish(parts)
    assert "whole" not in caplog.text and "out of order" not in caplog.text  # continued, not rewritten
    assert written.seconds_write > 0
    assert contents(tmp_path / "parted.gpkg") == contents(tmp_path / "at_end.gpkg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["at_end.gpkg", "parted.gpkg"]


def test_a_part_run_again_writes_none_of_its_chips_twice(tmp_path, caplog):
    """Dask runs a part again when its worker died after the append, before the scheduler had its result."""
    table, strips, parts, writer, finish, n_labels = _parted(tmp_path)
    first = stream.append_part(writer(), parts, strips[:2], n_labels)
    rerun = stream.append_part(writer(), parts, strips[:2], n_labels)  # the first part again
    assert (rerun.ok, rerun.counts, rerun.bounds) == (True, first.counts, first.bounds)
    assert writer().written() == first.n_chips
    second = stream.append_part(writer(), first, strips[2:4], n_labels)
    again = stream.append_part(writer(), first, strips[2:4], n_labels)
    assert again.ok and (again.counts, again.n_tables, again.bounds) == (second.counts, second.n_tables,
                                                                          second.bounds)
    assert writer().written() == second.n_chips
    with caplog.at_level("INFO", logger=stream.__name__):
        finish(again)
    assert "whole" not in caplog.text
    assert contents(tmp_path / "parted.gpkg") == contents(tmp_path / "at_end.gpkg")


def test_a_chips_layer_that_is_not_what_its_parts_say_is_written_whole(tmp_path, caplog):
    table, strips, parts, writer, finish, n_labels = _parted(tmp_path)
    first = stream.append_part(writer(), parts, strips[:2], n_labels)
    second = stream.append_part(writer(), first, strips[2:4], n_labels)
    # The first part run again once the second was written (its result was lost with a worker): the file
    # holds more than it expects, and it says so rather than write anything.
    assert not stream.append_part(writer(), parts, strips[:2], n_labels).ok
    assert writer().written() == second.n_chips
    discard(second.tmp)  # and a file that is gone (removed by hand, say): the write writes every chip
    assert not stream.append_part(writer(), second, strips[4:5], n_labels).ok
    with caplog.at_level("INFO", logger=stream.__name__):
        finish(second)
    assert "writing the layer whole" in caplog.text
    assert contents(tmp_path / "parted.gpkg") == contents(tmp_path / "at_end.gpkg")


class FailingPredictor:
    """The model, failing on its ``fail_on``-th batch."""

    def __init__(self, predictor, fail_on: int, parts: list[int]) -> None:
        self._p, self.fail_on, self.calls, self.parts = predictor, fail_on, 0, parts

    def __getattr__(self, name):
        return getattr(self._p, name)

    def _count(self):
        self.calls += 1
        if self.calls == self.fail_on:
            deadline = time.monotonic() + 30
            while len(self.parts) < 2 and time.monotonic() < deadline:  # the stream has written parts
                time.sleep(0.01)
            raise RuntimeError("the model failed on a batch")

    def predict(self, chips):
        self._count()
        return self._p.predict(chips)

    def submit(self, chips):
        self._count()
        return self._p.submit(chips)


def test_an_error_mid_stream_leaves_nothing_and_keeps_the_existing_output(make_raster, predictor, tmp_path,
                                                                          small_parts):
    scene = make_raster(width=640, height=448)
    out = tmp_path / "out" / "o.gpkg"
    out.parent.mkdir()
    out.write_bytes(b"the output of an earlier run")
    with pytest.raises(RuntimeError, match="failed on a batch"):
        run_scene(str(scene), str(out), FailingPredictor(predictor, fail_on=12, parts=small_parts), RunOptions(batch_size=4),
                  overwrite=True)
    assert len(small_parts) >= 2  # parts had been written into the temporary file before the failure
    assert out.read_bytes() == b"the output of an earlier run"
    assert [p.name for p in out.parent.iterdir()] == ["o.gpkg"]


def test_a_write_that_fails_mid_stream_fails_the_scene_and_leaves_nothing(make_raster, predictor, tmp_path,
                                                                          small_parts, monkeypatch):
    from scenetag.errors import OutputError

    real = GeoPackageWriter.append  # the counting one

    def append(self, table):
        if len(small_parts) == 3:
            raise OutputError("the disk is full")
        return real(self, table)

    monkeypatch.setattr(GeoPackageWriter, "append", append)
    out = tmp_path / "out" / "o.gpkg"
    out.parent.mkdir()
    with pytest.raises(OutputError, match="disk is full"):
        run_scene(str(make_raster(width=640, height=448)), str(out), predictor, RunOptions(batch_size=4))
    assert list(out.parent.iterdir()) == []


_KILLED_RUN = """
import sys, time
import scenetag.outputs_schema.stream as stream
from scenetag.jobs.options import RunOptions
from scenetag.jobs.runner import run_scene
from scenetag.model.backends import create_predictor

stream.PART_ROWS, stream.REORDER_WINDOW = 4, 4
model, scene, out = sys.argv[1:4]
predictor = create_predictor(model, backend="onnx")
predict = predictor.predict

def slow(chips):  # slow enough that the parent finds the stream half-way
    time.sleep(0.05)
    return predict(chips)

predictor.predict = slow
run_scene(scene, out, predictor, RunOptions(batch_size=2), overwrite=True)
"""


@pytest.mark.parametrize("existing", [False, True], ids=["new", "existing"])
def test_a_kill_during_the_streamed_write_leaves_no_output_and_replaces_none(make_raster, tiny_model, tmp_path,
                                                                             existing):
    scene = holey_scene(make_raster, width=640, height=400)
    folder = tmp_path / "out"
    folder.mkdir()
    out = folder / "o.gpkg"
    if existing:
        out.write_bytes(b"the output of an earlier run")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_RUN, str(tiny_model), str(scene), str(out)], cwd=ROOT,
                            env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        rows = 0
        while rows < 8:  # the stream has written parts into its temporary file
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the run never streamed"
            time.sleep(0.05)
            for tmp in folder.glob(TMP_GLOB):
                try:
                    con = sqlite3.connect(f"file:{tmp}?mode=ro", uri=True)
                    rows = con.execute("SELECT count(*) FROM chips").fetchone()[0]
                    con.close()
                except sqlite3.Error:  # not yet a GeoPackage with chips
                    pass
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    names = [p.name for p in folder.iterdir()]
    assert [n for n in names if not n.startswith(".")] == (["o.gpkg"] if existing else [])
    if existing:
        assert out.read_bytes() == b"the output of an earlier run"
    assert sweep_leftovers(folder)  # the dead writer's temporary is a leftover, removed by the next run
    assert [p.name for p in folder.iterdir()] == (["o.gpkg"] if existing else [])


#: What GPU workers declare (``dask worker --resources GPU=1``): the classify tasks ask for it, and only on
#: such a cluster are the chips layers streamed by part tasks.  Declared, not real: Dask schedules by it.
GPU_WORKERS = {"resources": {"GPU": 1}}


@pytest.fixture(scope="module")
def local_cluster():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      host="127.0.0.1", **GPU_WORKERS) as cluster:
        yield cluster


class StreamTasks(SchedulerPlugin):
    """Counts the part tasks (``stream``) of the scene jobs that finished."""

    name = "stream-tasks"

    def __init__(self) -> None:
        self.done = 0

    def transition(self, key, start, finish, *args, **kwargs):
        if finish == "memory" and str(key).startswith("scenetag_stream"):
            self.done += 1


@pytest.fixture
def stream_tasks(local_cluster):
    plugin = StreamTasks()
    local_cluster.scheduler.add_plugin(plugin, name=f"stream-tasks-{id(plugin)}")
    yield plugin
    local_cluster.scheduler.remove_plugin(name=f"stream-tasks-{id(plugin)}")


def test_batch_on_a_local_cluster_equals_run_with_the_streamed_write(make_raster, tiny_model, predictor, tmp_path,
                                                                     local_cluster, small_parts, stream_tasks):
    from scenetag.api import run_batch

    scene = holey_scene(make_raster, width=640, height=400)
    ran = run_scene(str(scene), str(tmp_path / "run.gpkg"), predictor, RunOptions(batch_size=4))
    assert len(small_parts) >= 3  # run streamed its chips
    report = run_batch([scene], tmp_path / "batch", model=tiny_model, backend="onnx",
                       scheduler=local_cluster.scheduler_address, options=RunOptions(batch_size=4),
                       chips_per_task=24)
    assert report.succeeded
    # Strips of 2 chip rows (20 cells): one part each (PART_ROWS is 5 here) but the last, which the write
    # task takes.
    assert stream_tasks.done == report.scenes[0].strips - 1 == 3
    assert contents(tmp_path / "batch" / "s.gpkg") == contents(Path(ran.output))
    assert [p.name for p in (tmp_path / "batch").iterdir() if p.name.startswith(".")] == []


def test_batch_writes_at_the_end_where_a_scene_is_one_part(make_raster, tiny_model, predictor, tmp_path,
                                                          local_cluster, stream_tasks):
    from scenetag.api import run_batch

    scene = holey_scene(make_raster, width=640, height=400)
    ran = run_scene(str(scene), str(tmp_path / "run.gpkg"), predictor, RunOptions(batch_size=4))
    report = run_batch([scene], tmp_path / "batch", model=tiny_model, backend="onnx",
                       scheduler=local_cluster.scheduler_address, options=RunOptions(batch_size=4),
                       chips_per_task=24)
    assert report.succeeded and report.scenes[0].strips == 4
    assert stream_tasks.done == 0  # 70 cells: fewer than stream.PART_ROWS, so no part task
    assert contents(tmp_path / "batch" / "s.gpkg") == contents(Path(ran.output))


def test_batch_on_cpu_workers_writes_at_the_end(make_raster, tiny_model, predictor, tmp_path, small_parts):
    """No core of a CPU worker is idle for part tasks: the write task takes every strip."""
    from distributed import LocalCluster

    from scenetag.api import run_batch

    scene = holey_scene(make_raster, width=640, height=400)
    ran = run_scene(str(scene), str(tmp_path / "run.gpkg"), predictor, RunOptions(batch_size=4))
    plugin = StreamTasks()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      host="127.0.0.1") as cpu_cluster:
        cpu_cluster.scheduler.add_plugin(plugin)
        report = run_batch([scene], tmp_path / "batch", model=tiny_model, backend="onnx",
                           scheduler=cpu_cluster.scheduler_address, options=RunOptions(batch_size=4),
                           chips_per_task=24)
    assert report.succeeded and report.scenes[0].strips == 4
    assert plugin.done == 0  # parts of 5 cells would have made 3 part tasks on GPU workers
    assert contents(tmp_path / "batch" / "s.gpkg") == contents(Path(ran.output))


class KillAtStream(WorkerPlugin):
    """Kills its worker when a part task of the scene job starts (``executing``) or has written its part
    (``memory``: the chips are in the file, the result is not yet with the scheduler), once per marker file."""

    def __init__(self, marker: str, when: str) -> None:
        self.marker, self.when = marker, when

    def transition(self, key, start, finish, **kwargs):
        if finish == self.when and str(key).startswith("scenetag_stream"):
            try:
                fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return
            os.close(fd)
            os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("when", ["executing", "memory"], ids=["before_its_append", "after_its_append"])
def test_a_worker_killed_at_a_part_task_leaves_the_file_of_the_write_at_the_end(make_raster, tiny_model, predictor,
                                                                               tmp_path, small_parts, when):
    """Dask runs the part again (and any whose result died with the worker): no chip is written twice."""
    from distributed import Client, LocalCluster

    from scenetag.api import run_batch
    from scenetag.jobs.cluster import local_cluster_settings

    scene = holey_scene(make_raster, width=640, height=400)
    ran = run_scene(str(scene), str(tmp_path / "run.gpkg"), predictor, RunOptions(batch_size=4))
    marker = tmp_path / "killed"
    with local_cluster_settings(), LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                                dashboard_address=":0", host="127.0.0.1",
                                                **GPU_WORKERS) as cluster:
        with Client(cluster) as client:
            client.register_plugin(KillAtStream(str(marker), when), name="kill-at-stream")
        report = run_batch([scene], tmp_path / "batch", model=tiny_model, backend="onnx",
                           scheduler=cluster.scheduler_address, options=RunOptions(batch_size=4),
                           chips_per_task=24)
    assert marker.exists()  # a worker died at a part task
    assert report.succeeded, report.scenes[0].error
    assert contents(tmp_path / "batch" / "s.gpkg") == contents(Path(ran.output))
    assert [p.name for p in (tmp_path / "batch").iterdir() if p.name.startswith(".")] == []


class FailLastStrip(WorkerPlugin):
    """Makes the classification of a scene's last strip fail as an unreadable block does (a per-scene failure)."""

    def setup(self, worker):
        import scenetag.jobs.scene_job as scene_job
        from scenetag.errors import SceneReadError

        real = scene_job.classify_strip

        def classify_strip(plan, cells, *args, **kwargs):
            if cells is not None and cells.row_stop == plan.grid.shape[0]:
                time.sleep(1.0)  # the parts before it are written first
                raise SceneReadError("block 7 of the scene is corrupt")
            return real(plan, cells, *args, **kwargs)

        scene_job.classify_strip = classify_strip


def test_a_scene_that_fails_after_parts_were_written_leaves_nothing(make_raster, tiny_model, tmp_path, small_parts):
    from distributed import Client, LocalCluster

    from scenetag.api import run_batch

    scene = holey_scene(make_raster, width=640, height=400)
    plugin = StreamTasks()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      host="127.0.0.1", **GPU_WORKERS) as cluster:
        cluster.scheduler.add_plugin(plugin)
        with Client(cluster) as client:
            client.register_plugin(FailLastStrip(), name="fail-last-strip")
        report = run_batch([scene], tmp_path / "batch", model=tiny_model, backend="onnx",
                           scheduler=cluster.scheduler_address, options=RunOptions(batch_size=4),
                           chips_per_task=24)
    assert plugin.done >= 3  # parts had been written into the temporary GeoPackage
    assert report.scenes[0].status == "failed" and "block 7" in report.scenes[0].error
    assert [p.name for p in (tmp_path / "batch").iterdir() if p.suffix == ".gpkg" or p.name.startswith(".")] == []
