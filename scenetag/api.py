"""scenetag as a Python library: classify one scene or many, and read the chips back.

>>> import scenetag
>>> result = scenetag.run_scene("scene.tif", "scene.gpkg", bands=(3, 2, 1))
>>> str(result.status), result.n_chips_classified
('ok', 4)
>>> chips = scenetag.read_chips("scene.gpkg")          # a GeoDataFrame
>>> report = scenetag.run_batch(["drop/"], "out/")     # on a Dask LocalCluster

These are the functions the command line calls: one scene job whatever the
executor (this process, or a Dask cluster with ``scheduler``).  Options of
the job (:class:`~scenetag.jobs.options.RunOptions`) are given as keywords,
or as ``options=``.  Errors are :class:`~scenetag.errors.ScenetagError`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:
    import geopandas

    from scenetag.jobs.dry_run import ScenePreview
    from scenetag.jobs.options import RunOptions
    from scenetag.jobs.report import BatchReport
    from scenetag.jobs.scene_job import SceneResult

PathLike = str | os.PathLike
#: "Not given": the dashboard address may be None (no dashboard), so None can't mean the default.
_DEFAULT = object()


def load_model(model: PathLike | None = None, spec: PathLike | None = None, *, backend: str = "auto",
               device: str = "auto", precision: str = "auto", tta: str | None = None,
               thresholds: Any = None) -> Any:
    """The predictor for ``model`` (default: the shipped model), with the spec of the ``spec`` JSON if given.

    ``precision`` "auto" runs a model as it was made; for the shipped model it
    takes the INT8 copy where OpenVINO runs it, the fp32 file elsewhere
    (:func:`~scenetag.model.default.default_for`).

    ``tta`` ("none", "flips", "d4") replaces the spec's test-time augmentation
    (a warning says when it is not the one the thresholds were fitted with);
    ``thresholds`` (one value, a list, or a label→value map) replace the spec's
    for this predictor only.
    """
    from scenetag.model.backends import create_predictor
    from scenetag.model.default import default_for
    from scenetag.model.spec import ModelSpec

    spec_value = ModelSpec.from_file(spec) if spec else None
    predictor = create_predictor(model or default_for(backend, device, precision), backend=backend, device=device,
                                 spec=spec_value, precision=precision, tta=tta)
    if thresholds is not None:
        predictor.spec = predictor.spec.with_thresholds(thresholds)
    return predictor


def default_for_cluster(backend: str, device: str, precision: str) -> Path:
    """The shipped default file for workers that load it on ``device`` (``cuda`` for GPU workers).

    As :func:`~scenetag.model.default.default_for`, except that a device left
    to "auto" is taken as the CPU only where this machine has no GPU either:
    the workers are not asked, and their GPUs run the fp32 file.
    """
    from scenetag.jobs.cluster import local_gpu_count
    from scenetag.model.default import default_for

    if device == "auto" and local_gpu_count():
        device = "cuda"
    return default_for(backend, device, precision)


def _read_here(precision: str, device: str) -> str:
    """The precision this process loads a model in that only the workers run (on the CPU, to read it).

    fp16 runs only on a GPU (refused here for ``--device cpu``, as ``run``
    refuses it); bf16 is refused and accepted by the same backends (the torch
    backend alone), so an ONNX model with either is still refused here, before any work.
    """
    from scenetag.errors import OptionError

    if precision != "fp16":
        return precision
    if device == "cpu":
        raise OptionError("--precision fp16 needs a CUDA device: use bf16 (or fp32) on the CPU")
    return "bf16"


def _options(predictor: Any, options: "RunOptions | None", values: dict) -> "RunOptions":
    from scenetag.jobs.options import RunOptions

    if options is not None:
        if values:
            raise TypeError(f"give options= or option keywords ({', '.join(sorted(values))}), not both")
        return options
    return RunOptions.for_model(predictor.spec.chip_size, **values)


def _check_before_loading(out: PathLike | None, options: "RunOptions | None", values: dict) -> None:
    """Refuse what needs no model to refuse (an output that is no GeoPackage, an unknown CRS) before loading it."""
    from scenetag.jobs.options import check_to_crs
    from scenetag.outputs_schema.outputs import SceneOutputs

    if out is not None:
        SceneOutputs(Path(out))
    check_to_crs(options.to_crs if options is not None else values.get("to_crs"))


def _planned_model(model: PathLike | Any | None, spec: PathLike | None, backend: str,
                   tta: str | None = None, thresholds: Any = None, device: str = "auto",
                   precision: str = "auto") -> Any:
    """The model as a dry run needs it: its file, checksum and spec (:class:`~jobs.models.PlannedModel`),
    with ``tta`` and ``thresholds`` applied to the spec as :func:`load_model` applies them."""
    import dataclasses

    from scenetag.hashing import file_sha256
    from scenetag.jobs.models import LocalModel, PlannedModel
    from scenetag.model.backends.registry import read_model_spec
    from scenetag.model.default import default_for
    from scenetag.model.spec import ModelSpec

    if _is_predictor(model):
        return LocalModel(model)
    path = Path(model or default_for(backend, device, precision))
    spec_value = read_model_spec(path, backend, ModelSpec.from_file(spec) if spec else None)
    if tta is not None:
        spec_value = dataclasses.replace(spec_value, tta=tta)
    if thresholds is not None:
        spec_value = spec_value.with_thresholds(thresholds)
    return PlannedModel(str(path), file_sha256(path), spec_value)


def _default_out(scene: PathLike) -> Path:
    """A scene's default GeoPackage, here: named by the file's stem (a URL's too, without its query),
    or by a STAC item's id."""
    from scenetag.jobs.stac import is_stac, read_item
    from scenetag.tiler.location import scene_name

    name = read_item(str(scene))[0].id if is_stac(str(scene)) else scene_name(scene)
    return Path.cwd() / (name + ".gpkg")


def run_scene(
    scene: PathLike,
    out: PathLike | None = None,
    *,
    model: PathLike | Any | None = None,
    spec: PathLike | None = None,
    backend: str = "auto",
    device: str = "auto",
    precision: str = "auto",
    tta: str | None = None,
    thresholds: Any = None,
    options: "RunOptions | None" = None,
    overwrite: bool = False,
    scheduler: str | None = None,
    progress: Callable[[int], Callable[[int], None]] | None = None,
    announce: Callable[[Any], None] | None = None,
    **option_values: Any,
) -> "SceneResult":
    """Classify ``scene`` and write its GeoPackage to ``out`` (default: the scene's name, ``.gpkg``, here).

    Args:
        scene: A GeoTIFF (any raster GDAL reads): a path, a URL, ``s3://bucket/key``, a ``/vsi...``
            path, or a STAC item (``item.json``, a URL, or ``collection.json#ITEM_ID``).
        out: The GeoPackage to write; an existing one is refused unless ``overwrite``.
        model: A model file, or a predictor already loaded; default: the shipped model.
        spec: A spec JSON for a model that carries none.
        backend, device, precision: How the model runs (see ``scenetag run --help``).
        tta, thresholds: Test-time augmentation and thresholds for this run instead of the
            spec's (see :func:`load_model`).
        options: The job's :class:`~scenetag.jobs.options.RunOptions`; or give them as keywords
            (``bands=(3, 2, 1)``, ``overlap=0.5``, ``edge="pad"``, ``raster=True``...).
        scheduler: A Dask scheduler address: run the scene on that cluster instead of here
            (``$SCENETAG_SCHEDULER`` when None; ``"local"`` for this process).
        progress: ``factory(total_chips)`` → callback taking chips done (relayed from the
            workers on a cluster).
        announce: Called with the cluster's description once connected (cluster runs only).

    Returns the :class:`~scenetag.jobs.scene_job.SceneResult`; a failure is raised.
    """
    from scenetag.jobs.cluster import resolve_scheduler

    out = Path(out) if out is not None else _default_out(scene)
    _check_before_loading(out, options, option_values)
    on_cluster = resolve_scheduler(scheduler) is not None
    # On a cluster the workers load the model on ``device``; here it is only read.
    if on_cluster and model is None:  # the file the workers' device takes, not this process's
        model = default_for_cluster(backend, device, precision)
    predictor = model if _is_predictor(model) else load_model(
        model, spec, backend=backend, device="cpu" if on_cluster else device,
        precision=_read_here(precision, device) if on_cluster else precision, tta=tta, thresholds=thresholds)
    opts = _options(predictor, options, option_values)
    if on_cluster:
        from scenetag.jobs.batch import run_scene_on_cluster

        return run_scene_on_cluster(scene, out, predictor, opts, overwrite=overwrite, device=device,
                                    backend=backend, precision=None if _is_predictor(model) else precision,
                                    scheduler=scheduler, announce=announce, progress=progress)
    from scenetag.jobs.runner import run_scene as run_here

    return run_here(str(scene), str(out), predictor, opts, overwrite=overwrite, progress=progress)


def run_batch(
    inputs: Sequence[PathLike],
    out_dir: PathLike,
    *,
    model: PathLike | Any | None = None,
    spec: PathLike | None = None,
    backend: str = "auto",
    device: str = "auto",
    precision: str = "auto",
    tta: str | None = None,
    thresholds: Any = None,
    options: "RunOptions | None" = None,
    scheduler: str | None = None,
    force: bool = False,
    retries: int = 1,
    workers: int | None = None,
    threads: int | None = None,
    gpu: bool | None = None,
    chips_per_task: int | None = None,
    report_path: PathLike | None = None,
    dashboard_address: str | None | object = _DEFAULT,
    forward_logs: bool = False,
    announce: Callable[[Any], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    on_done: Callable[[Any], None] | None = None,
    progress: Callable[[int], Callable[[int], None]] | None = None,
    dashboard_hold: float = 0.0,
    on_hold: Callable[[Any, str, float], None] | None = None,
    **option_values: Any,
) -> "BatchReport":
    """Classify every scene of ``inputs`` (files, folders, globs, list files) into ``out_dir`` on Dask.

    Scenes whose outputs are up to date are skipped unless ``force``; a scene
    that fails is tried ``retries`` more times, then recorded in the report.
    ``workers`` ... ``on_hold`` are those of :func:`scenetag.jobs.batch.run_batch`
    (the cluster, the task size, the report, callbacks); the other keywords
    are job options as in :func:`run_scene` (``tta`` and ``thresholds`` too).
    Returns the :class:`~scenetag.jobs.report.BatchReport` (also written as JSON).
    """
    from scenetag.jobs.batch import run_batch as batch
    from scenetag.jobs.cluster import DEFAULT_DASHBOARD

    _check_before_loading(None, options, option_values)
    # The workers load the model on ``device``; here it is only read.
    model = default_for_cluster(backend, "cuda" if gpu else device, precision) if model is None else model
    predictor = model if _is_predictor(model) else load_model(model, spec, backend=backend, device="cpu",
                                                              precision=_read_here(precision, device), tta=tta,
                                                              thresholds=thresholds)
    opts = _options(predictor, options, option_values)
    return batch(inputs, Path(out_dir), predictor, opts, device=device, backend=backend,
                 precision=None if _is_predictor(model) else precision, scheduler=scheduler,
                 force=force, retries=retries, workers=workers, threads=threads, gpu=gpu,
                 chips_per_task=chips_per_task, report_path=report_path,
                 dashboard_address=DEFAULT_DASHBOARD if dashboard_address is _DEFAULT else dashboard_address,
                 forward_logs=forward_logs, announce=announce, on_start=on_start, on_done=on_done,
                 progress=progress, dashboard_hold=dashboard_hold, on_hold=on_hold)


def plan_run(
    scene: PathLike,
    out: PathLike | None = None,
    *,
    model: PathLike | Any | None = None,
    spec: PathLike | None = None,
    backend: str = "auto",
    device: str = "auto",
    precision: str = "auto",
    tta: str | None = None,
    thresholds: Any = None,
    options: "RunOptions | None" = None,
    overwrite: bool = False,
    **option_values: Any,
) -> "ScenePreview":
    """What :func:`run_scene` would do with ``scene``, without classifying (``run --dry-run``).

    The model is read for its spec only; nothing is written.  Refusals and
    failures are in the preview (``action``, ``reason``), not raised.
    """
    from scenetag.jobs.dry_run import preview_scene

    out = Path(out) if out is not None else _default_out(scene)
    _check_before_loading(None, options, option_values)
    planned = _planned_model(model, spec, backend, tta, thresholds, device, precision)
    opts = _options(planned, options, option_values)
    return preview_scene(scene, out, planned, opts, skip_current=False, overwrite=overwrite)


def plan_batch(
    inputs: Sequence[PathLike],
    out_dir: PathLike,
    *,
    model: PathLike | Any | None = None,
    spec: PathLike | None = None,
    backend: str = "auto",
    device: str = "auto",
    precision: str = "auto",
    tta: str | None = None,
    thresholds: Any = None,
    options: "RunOptions | None" = None,
    force: bool = False,
    **option_values: Any,
) -> "list[ScenePreview]":
    """What :func:`run_batch` would do with each scene of ``inputs``, without classifying (``batch --dry-run``).

    No lock is taken, no cluster started, nothing written (not even ``out_dir``).
    """
    from scenetag.jobs.dry_run import preview_batch
    from scenetag.jobs.inputs import expand_inputs, output_paths

    _check_before_loading(None, options, option_values)
    scenes = expand_inputs(inputs)
    outs = output_paths(scenes, Path(out_dir))
    model = default_for_cluster(backend, device, precision) if model is None else model
    planned = _planned_model(model, spec, backend, tta, thresholds, device, precision)
    return preview_batch(scenes, outs, planned, _options(planned, options, option_values), force=force)


def read_chips(gpkg: PathLike) -> "geopandas.GeoDataFrame":
    """The ``chips`` layer of a scenetag GeoPackage: footprints, probabilities and tags."""
    import pyogrio

    from scenetag.errors import OutputError
    from scenetag.outputs_schema.schema import CHIPS_LAYER

    try:
        return pyogrio.read_dataframe(gpkg, layer=CHIPS_LAYER)
    except Exception as exc:  # pyogrio raises its own DataSourceError/DataLayerError
        raise OutputError(f"{str(gpkg)!r} has no scenetag chips layer ({exc}): is it a scenetag GeoPackage?") from exc


def _is_predictor(model: Any) -> bool:
    from scenetag.model.backends import Predictor

    return isinstance(model, Predictor)
