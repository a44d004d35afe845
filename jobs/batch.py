"""Many scenes as many scene jobs on Dask.

Each scene goes through the three steps of :mod:`jobs.scene_job`, as tasks:

``scenetag-prepare``
    Hash the scene, compare the signature recorded in an existing output
    (skip the scene when it matches), else :func:`~jobs.scene_job.plan_scene`.
``scenetag-classify``
    :func:`~jobs.scene_job.classify_cells` on one strip of chip rows.  A large
    scene is many strips, so one huge scene keeps the whole cluster busy.
    These are the only tasks that run the model; they ask for the resource
    ``GPU=1`` where the workers declare GPUs.
``scenetag-write``
    The scene's single writer: :meth:`ChipTable.concat` of its strips and
    :func:`~jobs.scene_job.write_scene` (atomic).

The model reaches each worker once: its bytes travel in a worker plugin,
which the scheduler also hands to workers that join (or restart) later, and
each worker process builds one predictor per model sha256 on first use.
Tasks carry only a small :class:`ModelRef`.

Failure policy: a :class:`~scenetag.errors.ScenetagError` from any task of a
scene (unreadable or corrupt scene, bad georeference, unwritable output...)
is an expected per-scene failure; the scene is tried again from the start
up to ``retries`` times, then recorded as failed while the others go on.
Model errors and anything else are not about one scene: they cancel the
batch and are raised.  A worker that dies is Dask's business: its tasks are
recomputed elsewhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

from distributed import WorkerPlugin

from scenetag.jobs.cluster import (DEFAULT_CHIPS_PER_TASK, DEFAULT_DASHBOARD, ClusterError, ClusterInfo, connect,
                          local_gpu_count)
from scenetag.jobs.inputs import expand_inputs, output_paths
from scenetag.jobs.lock import OutputLock
from scenetag.jobs.options import RunOptions
from scenetag.jobs.report import BatchReport, SceneRecord
from scenetag.jobs.scene_job import (ScenePlan, SceneResult, _now, classify_cells, plan_scene, signature,
                             write_scene)
from scenetag.hashing import file_sha256
from scenetag.model.spec import ModelSpec
from scenetag.outputs_schema.outputs import SceneOutputs
from scenetag.outputs_schema.records import ChipTable
from scenetag.atomic import TMP_GLOB
from scenetag.errors import ModelError, ModelLoadError, OutputError, SceneReadError, ScenetagError
from scenetag.tiler.grid import GridCell

log = logging.getLogger(__name__)

#: Report file written into the output folder unless another is named.
REPORT_NAME = "batch-report.json"


# --------------------------------------------------------------------------- the model on workers


@dataclass(frozen=True)
class ModelRef:
    """The model as tasks see it: small and picklable (the bytes travel in :class:`ModelPlugin`).

    It also stands in for the predictor where only its identity is needed
    (:func:`~jobs.scene_job.write_scene` reads ``sha256``).
    """

    path: str
    sha256: str
    spec: ModelSpec
    device: str = "cpu"
    #: ONNX Runtime threads per task; 1 because tasks run side by side.
    intra_op_threads: int = 1

    @classmethod
    def from_predictor(cls, predictor, device: str = "cpu") -> "ModelRef":
        return cls(str(predictor.path), predictor.sha256, predictor.spec, device)


_lock = threading.Lock()
#: plugin name → (ModelRef, model bytes), on each worker.
_shipped: dict[str, tuple[ModelRef, bytes]] = {}
#: (sha256, device, threads) → predictor, on each worker process.
_predictors: dict[tuple, object] = {}
#: Predictors built in this process (what the tests check: one per model per worker).
_loads: list[str] = []


class ModelPlugin(WorkerPlugin):
    """Carries the model bytes to every worker, once, including workers that start later."""

    def __init__(self, model: ModelRef, data: bytes) -> None:
        self.model = model
        self.data = data
        self.name = f"scenetag-model-{model.sha256[:12]}-{uuid.uuid4().hex[:8]}"

    def setup(self, worker) -> None:
        with _lock:
            _shipped[self.name] = (self.model, self.data)

    def teardown(self, worker) -> None:
        with _lock:
            _shipped.pop(self.name, None)
            if not any(ref.sha256 == self.model.sha256 for ref, _ in _shipped.values()):
                for key in [k for k in _predictors if k[0] == self.model.sha256]:
                    del _predictors[key]


def get_predictor(model: ModelRef):
    """This process's predictor for ``model``, built once from the shipped bytes."""
    key = (model.sha256, model.device, model.intra_op_threads)
    with _lock:
        if key in _predictors:
            return _predictors[key]
        data = next((d for ref, d in _shipped.values() if ref.sha256 == model.sha256), None)
        if data is None:
            # Not shipped to this process (an in-process call): read the file, and check it.
            log.info("model %s was not shipped to this process; reading %s", model.sha256[:12], model.path)
            data = Path(model.path).read_bytes()
        from scenetag.model.onnx_backend import OnnxPredictor

        predictor = OnnxPredictor(model.path, device=model.device, spec=model.spec,
                                  intra_op_threads=model.intra_op_threads, model_bytes=data)
        if predictor.sha256 != model.sha256:
            raise ModelLoadError(f"model {model.path!r} changed during the batch "
                                 f"(sha256 {predictor.sha256[:12]}, expected {model.sha256[:12]})")
        _predictors[key] = predictor
        _loads.append(model.sha256)
        return predictor


def model_loads() -> list[str]:
    """sha256 of each predictor this process has built (for tests and diagnostics)."""
    return list(_loads)


def model_bytes(predictor) -> bytes:
    """The bytes of an ONNX predictor's model file, checked against its sha256."""
    path = Path(predictor.path)
    if path.suffix.lower() != ".onnx":
        raise ModelLoadError(
            f"batch ships ONNX models to the workers, and {str(path)!r} is not one: "
            "export it first with `scenetag export`"
        )
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != predictor.sha256:
        raise ModelLoadError(f"model {str(path)!r} changed since it was loaded: run again")
    return data


# --------------------------------------------------------------------------- the tasks


@dataclass(frozen=True)
class Prepared:
    """A scene after its first task: skipped, or planned."""

    scene: str
    out: str
    scene_sha256: str
    signature: str
    started_at: str
    wall_start: float
    plan: ScenePlan | None = None

    @property
    def skipped(self) -> bool:
        return self.plan is None


@dataclass(frozen=True)
class SceneFailure:
    """An expected per-scene failure, returned by a task as a value (not raised, so not logged as a crash)."""

    error: ScenetagError
    stage: str

    def __str__(self) -> str:
        return str(self.error) or type(self.error).__name__


def _is_scene_error(exc: BaseException) -> bool:
    """Expected per-scene failures: scenetag errors that are not about the model."""
    return isinstance(exc, ScenetagError) and not isinstance(exc, ModelError)


def prepare_scene(scene: str, out: str, model: ModelRef, options: RunOptions, force: bool) -> Prepared:
    """Skip the scene if its output is up to date (unless ``force``), else plan it."""
    wall_start, started_at = time.time(), _now()
    if not Path(scene).is_file():
        raise SceneReadError(f"scene {scene!r} does not exist" if not Path(scene).exists()
                             else f"scene {scene!r} is not a file")
    try:
        scene_sha = file_sha256(scene)
    except OSError as exc:
        raise SceneReadError(f"scene {scene!r} cannot be read ({exc})") from exc
    sig = signature(scene_sha, model.sha256, model.spec, options)
    if not force and SceneOutputs(out, options.raster, options.to_crs).up_to_date(sig):
        return Prepared(scene, out, scene_sha, sig, started_at, wall_start)
    plan = plan_scene(scene, model.spec, options)
    return Prepared(scene, out, scene_sha, sig, started_at, wall_start, plan)


def classify_strip(plan: ScenePlan, cells: Sequence[GridCell], model: ModelRef) -> ChipTable:
    """Classify one strip of a planned scene with this worker's predictor."""
    return classify_cells(plan, get_predictor(model), cells=cells)


def write_output(prep: Prepared, model: ModelRef, *tables: ChipTable) -> SceneResult:
    """The scene's single writer: join its strips and write the GeoPackage atomically."""
    table = ChipTable.concat(tables, model.spec.n_labels)
    # write_scene times from a perf_counter start; the scene started in another process.
    t_start = time.perf_counter() - (time.time() - prep.wall_start)
    return write_scene(prep.plan, table, model, prep.out, started_at=prep.started_at, t_start=t_start,
                       overwrite=True, scene_sha256=prep.scene_sha256)


def _task(stage: str, fn: Callable, *args):
    """Run one task of a scene; an expected per-scene failure comes back as a :class:`SceneFailure` value.

    A failure among ``args`` (a strip of the scene, for its writer) is passed on without running ``fn``.
    """
    failed = next((a for a in args if isinstance(a, SceneFailure)), None)
    if failed is not None:
        return failed
    try:
        return fn(*args)
    except ScenetagError as exc:
        if not _is_scene_error(exc):
            raise
        return SceneFailure(exc, stage)


# --------------------------------------------------------------------------- the orchestration


@dataclass
class _Scene:
    record: SceneRecord
    attempt: int = 0
    wall_start: float = 0.0
    futures: list = field(default_factory=list)
    result: SceneResult | None = None


def gpu_resources(info: ClusterInfo, gpu: bool | None) -> dict | None:
    """``{"GPU": 1}`` when inference tasks should ask for a GPU: ``gpu`` True, or None and workers have one."""
    if gpu is False:
        return None
    if info.gpu_workers:
        return {"GPU": 1}
    if gpu:
        raise ClusterError(
            f"--gpu asks for GPU workers, but none of the {info.n_workers} workers at {info.scheduler} "
            "declares a GPU: start them with `dask worker SCHEDULER --resources GPU=1`"
        )
    return None


def run_scenes(
    client,
    records: Sequence[SceneRecord],
    model: ModelRef,
    options: RunOptions,
    *,
    force: bool = False,
    retries: int = 0,
    chips_per_task: int = DEFAULT_CHIPS_PER_TASK,
    resources: dict | None = None,
    on_done: Callable[[SceneRecord], None] | None = None,
    raise_scene_errors: bool = False,
) -> list[SceneResult | None]:
    """Run the scene of every record through prepare → classify strips → write on ``client``'s cluster.

    The model must already be on the workers (:class:`shipped`).  The records
    are updated as their scenes finish; returns each scene's
    :class:`SceneResult`, in record order (None where it failed).  Raises the
    first error that is not a per-scene failure, and with
    ``raise_scene_errors`` also the first per-scene failure after its retries.
    """
    from distributed import as_completed

    states = [_Scene(r) for r in records]
    # Bound to this client's loop: by default it takes the default client's (dask/distributed#4317).
    pending = as_completed(loop=client.loop)
    owner: dict[str, tuple[_Scene, int, str]] = {}

    def submit(state: _Scene, stage: str, fn, *args, **kwargs):
        # Tasks read and write files: every submission gets a key of its own.
        fut = client.submit(_task, stage, fn, *args, key=f"scenetag-{stage}-{uuid.uuid4().hex}", **kwargs)
        state.futures.append(fut)
        return fut

    def start(state: _Scene) -> None:
        state.attempt += 1
        state.record.attempts = state.attempt
        if state.attempt == 1:
            state.wall_start = time.time()
        fut = submit(state, "prepare", prepare_scene, state.record.scene, state.record.output, model, options,
                     force)
        owner[fut.key] = (state, state.attempt, "prepare")
        pending.add(fut)

    def finish(state: _Scene, status: str) -> None:
        state.record.status = status
        state.record.seconds = time.time() - state.wall_start
        state.futures.clear()  # release the scene's results on the cluster
        if on_done:
            on_done(state.record)

    def fail(state: _Scene, exc: ScenetagError) -> None:
        client.cancel(state.futures)
        state.futures.clear()
        if state.attempt <= retries:
            log.warning("%s failed (attempt %d of %d), trying again: %s", state.record.scene, state.attempt,
                        retries + 1, exc)
            start(state)
            return
        if raise_scene_errors:
            raise exc
        log.error("%s failed: %s", state.record.scene, exc)
        state.record.error = str(exc) or type(exc).__name__
        finish(state, "failed")

    for state in states:
        start(state)
    try:
        for fut in pending:
            state, attempt, stage = owner.pop(fut.key, (None, 0, ""))
            if state is None or attempt != state.attempt or fut.status == "cancelled":
                continue
            value = fut.result()  # anything but a per-scene failure is raised here, with its traceback
            if isinstance(value, SceneFailure):
                fail(state, value.error)
                continue
            rec = state.record
            if stage == "prepare":
                prep: Prepared = value
                if prep.skipped:
                    rec.reason = "output up to date (same signature)"
                    finish(state, "skipped")
                    continue
                plan = prep.plan
                rows = max(1, chips_per_task // max(1, plan.grid.shape[1]))
                strips = plan.grid.strips(rows)
                rec.strips = len(strips)
                rec.chips_total = len(plan.grid) + plan.grid.n_skipped
                classified = [submit(state, "classify", classify_strip, plan, cells, model, resources=resources)
                              for cells in strips]
                writer = submit(state, "write", write_output, prep, model, *classified)
                owner[writer.key] = (state, state.attempt, "write")
                pending.add(writer)
            else:
                result: SceneResult = value
                state.result = result
                rec.chips = result.n_chips_classified
                rec.chips_total = result.n_chips_total
                rec.chips_skipped_nodata = result.n_chips_skipped_nodata
                rec.reason = result.reason
                finish(state, result.status)
    except BaseException:
        client.cancel([f for s in states for f in s.futures])
        raise
    return [s.result for s in states]


class shipped:
    """Context manager: the model's bytes on every worker (a worker plugin), removed on exit."""

    def __init__(self, client, model: ModelRef, data: bytes) -> None:
        self.client = client
        self.plugin = ModelPlugin(model, data)

    def __enter__(self) -> ModelPlugin:
        self.client.register_plugin(self.plugin, name=self.plugin.name)
        return self.plugin

    def __exit__(self, *exc: object) -> None:
        try:
            self.client.unregister_worker_plugin(self.plugin.name)
        except Exception as err:  # noqa: BLE001 - cleanup must not hide the real error
            log.debug("could not unregister %s: %s", self.plugin.name, err)


def sweep_leftovers(out_dir: Path, min_age_s: float = 3600.0) -> list[Path]:
    """Remove the writers' temporary files that a killed run left in ``out_dir`` (older than ``min_age_s``).

    Called under the folder's lock, so no batch is writing them; the age keeps
    clear of a ``run`` writing into the same folder at this moment.
    """
    removed = []
    now = time.time()
    for tmp in out_dir.glob(TMP_GLOB):
        try:
            if now - tmp.stat().st_mtime >= min_age_s:
                tmp.unlink()
                removed.append(tmp)
        except FileNotFoundError:
            continue
    if removed:
        log.warning("removed %d temporary file(s) left by an interrupted run in %s", len(removed), out_dir)
    return removed


def _use_local_gpu(gpu: bool | None, device: str) -> bool:
    return bool(gpu) or (gpu is None and device != "cpu" and local_gpu_count() > 0)


@dataclass(frozen=True)
class _Session:
    """A client whose workers hold the model, and where its inference tasks go."""

    client: object
    info: ClusterInfo
    model: ModelRef
    resources: dict | None


@contextlib.contextmanager
def _model_on_cluster(predictor, device: str, scheduler: str | None, *, gpu: bool | None,
                      **connect_kwargs) -> Iterator[_Session]:
    """Connect (:func:`~jobs.cluster.connect`), ship the model to the workers, and yield the session."""
    data = model_bytes(predictor)
    model = ModelRef.from_predictor(predictor, device)
    with connect(scheduler, gpu=_use_local_gpu(gpu, device), **connect_kwargs) as (client, info):
        resources = gpu_resources(info, gpu)
        with shipped(client, model, data):
            yield _Session(client, info, model, resources)


def run_batch(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    predictor,
    options: RunOptions,
    *,
    device: str = "cpu",
    scheduler: str | None = None,
    workers: int | None = None,
    threads: int | None = None,
    gpu: bool | None = None,
    force: bool = False,
    retries: int = 0,
    chips_per_task: int = DEFAULT_CHIPS_PER_TASK,
    report_path: str | os.PathLike | None = None,
    dashboard_address: str | None = DEFAULT_DASHBOARD,
    forward_logs: bool = False,
    announce: Callable[[ClusterInfo], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    on_done: Callable[[SceneRecord], None] | None = None,
) -> BatchReport:
    """Classify every scene of ``inputs`` into ``out_dir`` on a Dask cluster; returns the report.

    ``predictor`` is the model as loaded on the client (its file is shipped to
    the workers, which load it on ``device``).  The report is also written as
    JSON to ``report_path`` (default ``out_dir/batch-report.json``).  Per-scene
    failures are in the report; :attr:`BatchReport.succeeded` says whether
    there were any.  Raises :class:`~scenetag.errors.LockedError` when another
    batch holds ``out_dir``.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    if not out_dir.exists():
        out_dir.mkdir(parents=True)
    if not out_dir.is_dir():
        raise OutputError(f"--out-dir {str(out_dir)!r} is not a folder")
    report = BatchReport(started_at=_now(), out_dir=str(out_dir.resolve()),
                         model={"name": predictor.spec.name, "path": str(predictor.path),
                                "sha256": predictor.sha256, "device": device},
                         options=options.to_dict())
    report_path = Path(report_path) if report_path else out_dir / REPORT_NAME

    def write_report() -> None:
        report.finished_at = _now()
        report.seconds = time.perf_counter() - t0
        report.write(report_path)

    with OutputLock(out_dir):
        sweep_leftovers(out_dir)
        scenes = expand_inputs(inputs)
        outs = output_paths(scenes, out_dir)
        report.scenes = [SceneRecord(str(s), str(o)) for s, o in zip(scenes, outs)]
        if on_start:
            on_start(len(scenes))
        if not scenes:
            log.warning("no scenes in %s: nothing to do", " ".join(map(str, inputs)))
            write_report()
        else:
            with _model_on_cluster(predictor, device, scheduler, gpu=gpu, workers=workers, threads=threads,
                                   dashboard_address=dashboard_address, announce=announce) as session:
                info = session.info
                report.scheduler, report.dashboard, report.n_workers = info.scheduler, info.dashboard, info.n_workers
                if forward_logs:
                    session.client.forward_logging("scenetag", level=logging.INFO)
                try:
                    run_scenes(session.client, report.scenes, session.model, options, force=force, retries=retries,
                               chips_per_task=chips_per_task, resources=session.resources, on_done=on_done)
                finally:
                    write_report()
    log.info("report: %s", report_path)
    return report


def run_scene_on_cluster(
    scene: str | os.PathLike,
    out: str | os.PathLike,
    predictor,
    options: RunOptions,
    *,
    overwrite: bool = False,
    device: str = "cpu",
    scheduler: str | None = None,
    chips_per_task: int = DEFAULT_CHIPS_PER_TASK,
    announce: Callable[[ClusterInfo], None] | None = None,
) -> SceneResult:
    """``run`` on a cluster: one scene, split into strips, written to ``out``; raises its error.

    An existing ``out`` is refused before any work unless ``overwrite``, as
    :func:`~jobs.scene_job.run_scene` does.
    """
    SceneOutputs(out, options.raster, options.to_crs).check(overwrite)
    with _model_on_cluster(predictor, device, scheduler, gpu=None, announce=announce) as session:
        # A scene's ScenetagError is raised here, as `run` raises it in-process.
        record = SceneRecord(str(Path(scene).resolve()), str(out))
        [result] = run_scenes(session.client, [record], session.model, options, force=True,
                              chips_per_task=chips_per_task, resources=session.resources, raise_scene_errors=True)
    return result
