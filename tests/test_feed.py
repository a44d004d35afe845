"""The double-buffered pipeline on reader processes gives the thread path's chips and tables."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner

from scenetag.jobs.options import RunOptions
from scenetag.jobs.classify import classify_cells, reader_mode
from scenetag.jobs.planning import plan_scene
from scenetag.model.backends import Submitter, create_predictor
from scenetag.jobs.pipeline import forget_predictor
from scenetag.tiler.feed import ProcessFeed
from tests.tiler_rasters import holey_scene


def _same_tables(a, b) -> None:
    """The same chips, in the same order, with the same valid fractions and probabilities."""
    assert len(a) == len(b) > 0 and a.n_skipped_nodata == b.n_skipped_nodata
    for col in ("row", "col", "x_off", "y_off", "width", "height"):
        np.testing.assert_array_equal(getattr(a, col), getattr(b, col))
    np.testing.assert_allclose(a.valid_fraction, b.valid_fraction, atol=1e-6)
    np.testing.assert_allclose(a.probs, b.probs, atol=1e-6)


@pytest.mark.parametrize("batch_size", [None, 5])
def test_processes_and_threads_give_the_same_table(make_raster, tiny_model, batch_size):
    path = holey_scene(make_raster, width=420, height=390)
    predictor = create_predictor(tiny_model)
    tables = {}
    for mode in ("threads", "processes"):
        opts = RunOptions(reader=mode, readers=2, batch_size=batch_size, stride=48)
        plan = plan_scene(path, predictor.spec, opts)
        done = []
        tables[mode] = classify_cells(plan, predictor, progress=done.append)
        assert sum(done) == len(plan.grid)
    a, b = tables["threads"], tables["processes"]
    _same_tables(a, b)
    assert a.n_skipped_nodata > 0
    timings = b.extra["timings"]
    assert timings["readers"] == 2 and timings["wall"] > 0 and b.seconds_read > 0


class _PoisonedFeed(ProcessFeed):
    """A feed that scribbles over a slot the moment it is given back, so a premature release shows."""

    made: list["_PoisonedFeed"] = []

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        _PoisonedFeed.made.append(self)

    def _release(self, slot: int) -> None:
        self._slots[slot][...] = 77
        super()._release(slot)


class _LazyDirect:
    """A backend that uploads straight from registered memory, late (as a copy engine may)."""

    device = "cuda:0"  # what it stands for: a backend on a GPU, with its own submit
    on_gpu = True
    gpu_seconds = 0.0

    def __init__(self, inner, batch_size: int) -> None:
        self.inner, self.batch_size = inner, batch_size
        self.spec, self.sha256, self.path = inner.spec, inner.sha256, inner.path
        self.registered: list[int] = []
        self.unregistered: list[int] = []

    def predict(self, chips):
        return self.inner.predict(chips)

    def register_host(self, memory) -> bool:
        self.registered.append(memory.ctypes.data)
        return True

    def unregister_host(self, memory) -> None:
        self.unregistered.append(memory.ctypes.data)

    def submit(self, parts, direct=False):
        assert direct, "inside uploading_from the parts must go direct"
        return _LazyUpload(self.inner, list(parts))


class _LazyUpload:
    def __init__(self, inner, parts) -> None:
        self.inner, self.parts, self.batch = inner, parts, None

    def uploaded(self) -> None:
        if self.batch is None:  # the "DMA" reads the slots only now
            self.batch = np.concatenate(self.parts)
            self.parts = None

    def result(self):
        self.uploaded()
        return self.inner.predict(self.batch)


@pytest.mark.parametrize("batch_size", [3, 16, 64])
@pytest.mark.parametrize("direct", [False, True])
def test_slots_go_back_only_once_their_chips_are_uploaded(make_raster, tiny_model, monkeypatch, batch_size, direct):
    """Batches that end mid-run, on a run boundary or span runs: no slot is given back too early."""
    import scenetag.jobs.pipeline

    monkeypatch.setattr(scenetag.jobs.pipeline, "ProcessFeed", _PoisonedFeed)
    path = holey_scene(make_raster, width=700, height=390)
    inner = create_predictor(tiny_model)
    predictor = _LazyDirect(inner, batch_size) if direct else inner
    opts = RunOptions(readers=2, batch_size=batch_size, stride=32)
    a = classify_cells(plan_scene(path, inner.spec, replace(opts, reader="threads")), inner)
    b = classify_cells(plan_scene(path, inner.spec, replace(opts, reader="processes")), predictor)
    _same_tables(a, b)
    assert b.extra["timings"]["direct_upload"] is direct
    if direct:  # the slots were page-locked once, kept for the next scene, and let go with the model
        assert len(predictor.registered) == 1 and predictor.unregistered == []
        c = classify_cells(plan_scene(path, inner.spec, replace(opts, reader="processes")), predictor)
        _same_tables(a, c)
        assert len(predictor.registered) == 1 and predictor.unregistered == []  # not again for the next scene
        forget_predictor(predictor)
        assert predictor.unregistered == predictor.registered


def test_a_sparse_scene_does_not_starve_the_readers_of_slots(make_raster, tiny_model, monkeypatch):
    """Runs that keep one chip each: the consumer submits short batches instead of holding every slot."""
    import scenetag.jobs.pipeline

    monkeypatch.setattr(scenetag.jobs.pipeline, "ProcessFeed", _PoisonedFeed)
    rng = np.random.default_rng(5)
    data = np.zeros((3, 64 * 12, 64 * 64), np.uint8)
    for c in range(0, 64, 16):  # one valid chip column in 16
        data[:, :, c * 64:(c + 1) * 64] = rng.integers(1, 255, size=(3, 64 * 12, 64))
    path = make_raster("sparse.tif", data, nodata=0, tiled=True)
    inner = create_predictor(tiny_model)
    batch = 64  # more runs than the feed's slots to fill one batch
    a = classify_cells(plan_scene(path, inner.spec, RunOptions(reader="threads")), inner)
    b = classify_cells(plan_scene(path, inner.spec, RunOptions(reader="processes", readers=1, batch_size=batch)),
                       _LazyDirect(inner, batch))
    feed = _PoisonedFeed.made[-1]
    assert -(-batch // 2) > feed.max_held  # at two kept chips per run, a full batch would need every slot
    _same_tables(a, b)


def test_reader_mode_picks_processes_only_for_a_gpu_model(tiny_model):
    cpu = create_predictor(tiny_model)
    assert reader_mode(RunOptions(), cpu, 10_000) == "threads"
    assert reader_mode(RunOptions(reader="processes"), cpu, 10) == "processes"

    class FakeGpu:
        device, on_gpu = "cuda:0", True
    assert reader_mode(RunOptions(), FakeGpu(), 10_000) == "processes"
    assert reader_mode(RunOptions(), FakeGpu(), 10) == "threads"  # too small to pay for processes

    class FakeOrtGpu:
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        device, on_gpu = "cuda:0", True
    assert reader_mode(RunOptions(), FakeOrtGpu(), 10_000) == "processes"
    assert reader_mode(RunOptions(reader="threads"), FakeOrtGpu(), 10_000) == "threads"


def test_a_daemonic_process_reads_with_threads_even_when_processes_are_asked(tiny_model, monkeypatch, caplog):
    """A Dask worker may not start children: ``--reader processes`` there falls back to threads, saying so."""
    import logging
    import types

    import scenetag.jobs.classify

    class FakeGpu:
        device, on_gpu = "cuda:0", True
    monkeypatch.setattr(scenetag.jobs.classify.multiprocessing, "current_process", lambda: types.SimpleNamespace(daemon=True))
    monkeypatch.setattr(scenetag.jobs.classify, "_warned_daemonic", False)
    with caplog.at_level(logging.WARNING, logger="scenetag.jobs.classify"):
        assert reader_mode(RunOptions(reader="processes"), FakeGpu(), 10_000) == "threads"
        assert reader_mode(RunOptions(), FakeGpu(), 10_000) == "threads"
    # Once per process, not per task: what it costs and how to start workers that may.
    assert caplog.text.count("may not start reader processes") == 1
    assert "DASK_DISTRIBUTED__WORKER__DAEMON=False" in caplog.text and "chips/s" in caplog.text


def test_process_path_times_inference_per_call_not_over_the_predictor_life(make_raster, tiny_model):
    """A predictor's ``gpu_seconds`` is a running total: each table gets only its own share."""
    path = holey_scene(make_raster, width=300, height=300)
    inner = create_predictor(tiny_model)

    class Timed:  # an AsyncPredictor off the GPU: the Submitter runs its predict on a thread
        spec, sha256, path, batch_size = inner.spec, inner.sha256, inner.path, 4
        device, on_gpu = "cpu", False
        gpu_seconds = 0.0

        def predict(self, chips):
            self.gpu_seconds += 1.0  # one "second" per batch
            return inner.predict(chips)

        def submit(self, parts, direct=False):
            raise AssertionError("off the GPU the Submitter calls predict")

        def register_host(self, array):
            return False

        def unregister_host(self, array):
            pass

    predictor = Timed()
    plan = plan_scene(path, predictor.spec, RunOptions(reader="processes", readers=1))
    first = classify_cells(plan, predictor)
    second = classify_cells(plan, predictor)
    n_batches = -(-len(first) // 4)
    assert first.seconds_infer == second.seconds_infer == n_batches
    assert predictor.gpu_seconds == 2 * n_batches


def test_submitter_runs_a_plain_backend_on_a_thread_and_copies_the_parts(tiny_model):
    predictor = create_predictor(tiny_model)
    rng = np.random.default_rng(0)
    chips = rng.integers(0, 255, size=(6, 3, 64, 64)).astype(np.uint8)
    expected = predictor.predict(chips)
    with Submitter(predictor) as sub:
        parts = [chips[:2].copy(), chips[2:].copy()]
        pending = sub.submit(parts)
        for p in parts:
            p[:] = 0  # the caller may reuse its memory at once
        np.testing.assert_allclose(pending.result(), expected, atol=1e-6)


def test_cli_run_with_reader_processes(make_raster, tiny_model, tmp_path):
    import pyogrio  # the writer's stack: imported here, so the GPU tests above run without it

    from cli import main
    from scenetag.outputs_schema.schema import OutputSchema

    path = holey_scene(make_raster, width=300, height=300)
    chips = {}
    for mode in ("processes", "threads"):
        out = tmp_path / f"{mode}.gpkg"
        res = CliRunner().invoke(main, ["run", str(path), "--model", str(tiny_model), "-o", str(out),
                                        "--reader", mode, "--readers", "2", "--no-progress"])
        assert res.exit_code == 0, res.output
        assert out.exists() and "classified" in res.output
        chips[mode] = pyogrio.read_dataframe(out, layer="chips")
    a, b = chips["processes"], chips["threads"]
    assert len(a) == len(b) > 0
    assert list(a.columns) == list(b.columns)
    probs = [*OutputSchema(create_predictor(tiny_model).spec.labels).prob_columns, "top_prob"]
    np.testing.assert_allclose(a[probs].to_numpy(), b[probs].to_numpy(), atol=1e-6)
    rest = [c for c in a.columns if c not in probs and c != "geometry"]
    assert a[rest].equals(b[rest])
    assert a.geometry.geom_equals(b.geometry).all()


@pytest.mark.gpu
def test_cuda_pipeline_gives_the_cpu_tags(make_raster, tmp_path):
    """Reader processes + double-buffered CUDA inference against threads + the CPU, same checkpoint."""
    pytest.importorskip("torch")
    from scenetag.model.training.checkpoint import save_checkpoint
    from tests.model_fixtures import small_model, tiny_spec

    spec = tiny_spec()
    ckpt = save_checkpoint(tmp_path / "m.pt", small_model(spec, seed=1), spec)
    path = holey_scene(make_raster, width=900, height=700)
    cpu = create_predictor(ckpt, backend="torch", device="cpu")
    gpu = create_predictor(ckpt, backend="torch", device="cuda")
    a = classify_cells(plan_scene(path, spec, RunOptions(reader="threads")), cpu)
    b = classify_cells(plan_scene(path, spec, RunOptions(reader="processes", batch_size=7)), gpu)
    np.testing.assert_array_equal(a.row, b.row)
    np.testing.assert_array_equal(a.col, b.col)
    np.testing.assert_allclose(a.probs, b.probs, atol=2e-3)  # TF32 convolutions on CUDA
    assert b.extra["timings"]["readers"] >= 1 and gpu.gpu_seconds > 0
    assert b.extra["timings"]["direct_upload"]  # uploaded from the page-locked slots
