"""Many scenes on Dask: ``batch``, and ``run --scheduler``.

Both are the scene job of :mod:`jobs.runner` on a
:class:`~jobs.executors.DaskExecutor`: connect to the cluster
(:mod:`jobs.cluster`), ship the model to its workers (:mod:`jobs.shipping`),
run the scenes.  ``batch`` adds what many scenes need: the folder's lock,
the sweep of a killed run's temporary files, skipping up-to-date outputs,
retries, and the report.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from scenetag.errors import OutputError
from scenetag.jobs.cluster import (DEFAULT_DASHBOARD, ClusterInfo, chips_per_task_for, connect, gpu_resources,
                                   local_gpu_count, warn_thread_readers)
from scenetag.jobs.executors import DaskExecutor
from scenetag.jobs.inputs import expand_inputs, output_paths
from scenetag.tiler.location import redact
from scenetag.jobs.lock import OutputLock
from scenetag.jobs.models import ShippedModel
from scenetag.jobs.options import RunOptions
from scenetag.jobs.report import BatchReport, SceneRecord
from scenetag.jobs.runner import ProgressFactory, run_one, run_scenes
from scenetag.jobs.scene_job import SceneResult, _now
from scenetag.jobs.shipping import shipped
from scenetag.jobs.sweep import sweep_leftovers

log = logging.getLogger(__name__)

#: Report file written into the output folder unless another is named.
REPORT_NAME = "batch-report.json"


def _use_local_gpu(gpu: bool | None, device: str) -> bool:
    return bool(gpu) or (gpu is None and device != "cpu" and local_gpu_count() > 0)


@dataclass(frozen=True)
class _Session:
    """A cluster whose workers hold the model, the executor on it, and where inference tasks go."""

    executor: DaskExecutor
    info: ClusterInfo
    model: ShippedModel
    resources: dict | None


@contextlib.contextmanager
def _model_on_cluster(predictor: Any, device: str, scheduler: str | None, *, gpu: bool | None,
                      chips_per_task: int | None, backend: str = "auto", reader: str = "auto",
                      precision: str | None = None, **connect_kwargs: Any) -> Iterator[_Session]:
    """Connect (:func:`~jobs.cluster.connect`), ship the model to the workers, and yield the session.

    Workers that will read with threads where ``reader`` meant processes are named once, here.
    """
    with connect(scheduler, gpu=_use_local_gpu(gpu, device), **connect_kwargs) as (client, info):
        resources = gpu_resources(info, gpu)
        warn_thread_readers(client, info, reader, device, resources)
        with shipped(client, predictor, device, backend, precision) as model:
            executor = DaskExecutor(client, chips_per_task_for(resources, chips_per_task))
            try:
                yield _Session(executor, info, model, resources)
            finally:
                executor.close()


def _check_writable(report_path: Path) -> None:
    """Refuse a report that could not be written, before any work: its folder must exist and take files."""
    folder = report_path.parent
    if report_path.is_dir():
        raise OutputError(f"--report {str(report_path)!r} is a folder: give a file name")
    if not folder.is_dir():
        raise OutputError(f"--report {str(report_path)!r}: its folder {str(folder)!r} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK) or (report_path.exists() and not os.access(report_path, os.W_OK)):
        raise OutputError(f"--report {str(report_path)!r} cannot be written: choose a writable place")
    try:  # root passes os.access everywhere, a read-only file system does not: ask the file system
        probe = folder / f".{report_path.name}.{os.getpid()}.probe"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"--report {str(report_path)!r} cannot be written ({exc.strerror}): "
                          "choose a writable place") from exc


def run_batch(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    predictor,
    options: RunOptions,
    *,
    device: str = "cpu",
    backend: str = "auto",
    precision: str | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    threads: int | None = None,
    gpu: bool | None = None,
    force: bool = False,
    retries: int = 0,
    chips_per_task: int | None = None,
    report_path: str | os.PathLike | None = None,
    dashboard_address: str | None = DEFAULT_DASHBOARD,
    forward_logs: bool = False,
    announce: Callable[[ClusterInfo], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    on_done: Callable[[SceneRecord], None] | None = None,
    progress: ProgressFactory | None = None,
    dashboard_hold: float = 0.0,
    on_hold: Callable[[BatchReport, str, float], None] | None = None,
) -> BatchReport:
    """Classify every scene of ``inputs`` into ``out_dir`` on a Dask cluster; returns the report.

    ``predictor`` is the model as loaded on the client (its file is shipped to
    the workers, which load it on ``device`` with ``backend``: "auto" picks on
    each worker, for its device) in ``precision`` (default: the predictor's own;
    bf16/fp16 for a torch checkpoint).  The report is also written as
    JSON to ``report_path`` (default ``out_dir/batch-report.json``).  Per-scene
    failures are in the report; :attr:`BatchReport.succeeded` says whether
    there were any.  Raises :class:`~scenetag.errors.LockedError` when another
    batch holds ``out_dir``.

    ``chips_per_task`` None takes the default for where the classify tasks go
    (:func:`~jobs.cluster.chips_per_task_for`: larger tasks for GPU workers).

    ``on_start`` is called with the number of scenes, ``on_done`` with each
    scene's record as it finishes, and ``progress`` (a factory, as in
    :func:`~jobs.runner.run_scenes`) with each planned scene's chip count; the
    callback it returns gets the chips done, relayed from the workers.

    ``dashboard_hold`` keeps a LocalCluster (and its dashboard) up for that many
    seconds after the batch, so that its task stream can be looked at;
    ``on_hold(report, dashboard_link, seconds)`` is called as it begins, and Ctrl-C
    (or SIGTERM) ends it early.  A cluster that is not ours is never held.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"--out-dir {str(out_dir)!r} is not a folder") from None
    except OSError as exc:
        raise OutputError(f"--out-dir {str(out_dir)!r} cannot be created ({exc.strerror}): "
                          "choose a writable place") from exc
    report = BatchReport(started_at=_now(), out_dir=str(out_dir.resolve()),
                         model={"name": predictor.spec.name, "path": str(predictor.path),
                                "sha256": predictor.sha256, "device": device},
                         options=options.to_dict())
    report_path = Path(report_path) if report_path else out_dir / REPORT_NAME
    _check_writable(report_path)  # before any work, not after the night's

    def write_report() -> None:
        report.finished_at = _now()
        report.seconds = time.perf_counter() - t0
        try:
            report.write(report_path)
        except OSError as exc:  # a full disk: the error that stopped the batch matters more than its report
            log.error("could not write the report %s: %s", report_path, exc)

    with OutputLock(out_dir):
        sweep_leftovers(out_dir)
        scenes = expand_inputs(inputs)
        outs = output_paths(scenes, out_dir)
        # The report shows each scene redacted (no signed URL's query); the job reads it as given.
        report.scenes = [SceneRecord(redact(s), str(o)) for s, o in zip(scenes, outs)]
        if on_start:
            on_start(len(scenes))
        if not scenes:
            log.warning("no scenes in %s: nothing to do", " ".join(map(str, inputs)))
            write_report()
        else:
            with _model_on_cluster(predictor, device, scheduler, gpu=gpu, chips_per_task=chips_per_task,
                                   backend=backend, reader=options.reader, precision=precision,
                                   workers=workers, threads=threads,
                                   dashboard_address=dashboard_address, announce=announce) as session:
                info = session.info
                report.scheduler, report.dashboard, report.n_workers = info.scheduler, info.dashboard, info.n_workers
                if forward_logs:
                    session.executor.client.forward_logging("scenetag", level=logging.INFO)
                try:
                    # Outputs that are out of date are replaced: the batch owns its folder.
                    run_scenes(session.executor, report.scenes, session.model, options, skip_current=not force,
                               overwrite=True, retries=retries, resources=session.resources, on_done=on_done,
                               locations=[str(s) for s in scenes], progress=progress)
                finally:
                    write_report()
                if dashboard_hold > 0:
                    _hold_dashboard(info, dashboard_hold,
                                    on_hold and (lambda link, seconds: on_hold(report, link, seconds)))
    log.info("report: %s", report_path)
    return report


def _hold_dashboard(info: ClusterInfo, seconds: float, on_hold: Callable[[str, float], None] | None) -> None:
    """Keep this LocalCluster's dashboard up for ``seconds`` (the batch is done and reported); Ctrl-C ends it."""
    if not info.local or not info.dashboard:
        log.warning("--dashboard-hold holds only a LocalCluster's dashboard: %s",
                    "this one has none" if info.local else f"the cluster at {info.scheduler} keeps its own")
        return
    if on_hold is not None:
        on_hold(info.dashboard, seconds)
    try:
        time.sleep(seconds)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM as the CLI raises it: the hold ends, the batch stands
        log.info("dashboard hold ended early")


def run_scene_on_cluster(
    scene: str | os.PathLike,
    out: str | os.PathLike,
    predictor: Any,
    options: RunOptions,
    *,
    overwrite: bool = False,
    device: str = "cpu",
    backend: str = "auto",
    precision: str | None = None,
    scheduler: str | None = None,
    chips_per_task: int | None = None,
    announce: Callable[[ClusterInfo], None] | None = None,
    progress: ProgressFactory | None = None,
) -> SceneResult:
    """``run --scheduler``: the scene job with one scene on a Dask cluster; raises the scene's error.

    The same steps as :func:`~jobs.runner.run_scene`, so the same refusals:
    existing outputs unless ``overwrite``, before any work and again at the write.
    """
    with _model_on_cluster(predictor, device, scheduler, gpu=None, chips_per_task=chips_per_task,
                           backend=backend, reader=options.reader, precision=precision,
                           announce=announce) as session:
        return run_one(session.executor, scene, out, session.model, options, overwrite=overwrite,
                       resources=session.resources, progress=progress)
