"""What the CLI commands share, defined once: error handling, logging, and the shared options.

Each shared option is a decorator here (as ``rasterio/rio/options.py`` does),
so the same thing has the same name, default and help in every command;
commands import this module, never each other.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import click

from scenetag.click_error import ScenetagClickError
from scenetag.config import DEFAULT_MAX_CHIPS, DEFAULT_RESAMPLE_MAX_FACTOR
from scenetag.errors import DataError, ScenetagError
from scenetag.gdal_messages import route_gdal_messages


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (``timeout``, cron, systemd): raised where the program is, to stop it as Ctrl-C does.

    A :class:`KeyboardInterrupt`, so every clean-up that Ctrl-C runs (temporary
    outputs removed, reader processes and the cluster stopped) runs for it too.
    """


#: Exit codes of a stopped command: 128 + the signal, as a shell reports it.
EXIT_INTERRUPTED, EXIT_TERMINATED = 128 + signal.SIGINT, 128 + signal.SIGTERM


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated()


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """Within the block (in the main thread), SIGTERM raises :class:`Terminated`."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn :class:`ScenetagError`, Ctrl-C and SIGTERM into one-line CLI errors (exit 1..3, 130, 143)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with _sigterm_as_interrupt():
                return func(*args, **kwargs)
        except ScenetagError as exc:
            logging.getLogger("scenetag").debug("error detail", exc_info=True)
            raise ScenetagClickError(exc) from exc
        except Terminated:
            click.echo("terminated (SIGTERM): stopped; the output being written was removed", err=True)
            sys.exit(EXIT_TERMINATED)
        except KeyboardInterrupt:
            click.echo("interrupted: no output was written", err=True)
            sys.exit(EXIT_INTERRUPTED)

    return wrapper


#: Third-party loggers: at WARNING or above, whatever -v says.
NOISY_LOGGERS = ("rasterio", "pyogrio", "fiona", "distributed", "bokeh", "tornado")


def configure_logging(verbose: int, quiet: int) -> None:
    """Send logs to stderr at a level set by -v/-q counts (default WARNING... INFO)."""
    level = logging.INFO - 10 * verbose + 10 * quiet
    logging.basicConfig(
        level=max(logging.DEBUG, min(logging.CRITICAL, level)),
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    from scenetag.tiler.location import redact_logs

    for handler in logging.getLogger().handlers:  # signed URLs' queries never reach a log
        redact_logs(handler)
    quiet_third_party()
    route_gdal_messages()


def quiet_third_party() -> None:
    """Keep third-party chatter out of our logs: at WARNING, or at ours where that is higher.

    Call it again after importing ``distributed``, which sets its own levels on import.
    """
    level = max(logging.WARNING, logging.getLogger().level)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(level)


def model_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--model PATH``: model file; the shipped default model when omitted."""
    return click.option(
        "--model", "-m", "model_path", type=click.Path(dir_okay=False), default=None,
        help="Model file (.onnx, or a scenetag/Lightning checkpoint with --backend torch). "
        "Default: the model shipped with scenetag.",
    )(func)


def spec_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--spec FILE``: a model spec JSON for models that carry none."""
    return click.option(
        "--spec", "spec_path", type=click.Path(exists=True, dir_okay=False), default=None,
        help="Model spec JSON (labels, thresholds, bands, mean/std...) for a model "
        "that carries none in its metadata, or to override the stored one.",
    )(func)


def scheduler_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--scheduler ADDRESS``: an existing Dask cluster (shared by ``run`` and ``batch``)."""
    return click.option(
        "--scheduler", metavar="ADDRESS", default=None,
        help="Address of an existing Dask scheduler, e.g. tcp://10.0.0.5:8786; 'local' ignores "
        "$SCENETAG_SCHEDULER. Default: $SCENETAG_SCHEDULER if set; otherwise `batch` starts a "
        "LocalCluster on this machine and `run` works in this process.",
    )(func)


def device_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--device``: where the model runs; ``auto`` (the default everywhere) takes a GPU when there is one."""
    return click.option(
        "--device", default="auto", show_default=True, metavar="DEVICE",
        help="cpu, cuda, cuda:N, or auto (a GPU when the backend has one, else the CPU).",
    )(func)


def overwrite_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--overwrite``: replace existing outputs (never done without it)."""
    return click.option("--overwrite", is_flag=True, help="Replace existing outputs.")(func)


def progress_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--progress/--no-progress``: the progress bar on stderr."""
    return click.option(
        "--progress/--no-progress", default=None,
        help="Progress bar on stderr. Default: on when stderr is a terminal. Without it, batch logs "
        "each finished scene and the chips done every $SCENETAG_PROGRESS_INTERVAL seconds (30).",
    )(func)


def show_progress(progress: bool | None) -> bool:
    """Whether to draw progress: the option's value, else whether stderr is a terminal."""
    return sys.stderr.isatty() if progress is None else progress


def batch_size_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--batch-size N``: chips per model call; the backend chooses by default."""
    return click.option(
        "--batch-size", type=click.IntRange(min=1), default=None,
        help="Chips per model call. Default: the backend's choice for the device.",
    )(func)


# -- the model commands (train, evaluate, calibrate, export) ---------------------------------------------


def backend_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--backend NAME``: the inference backend, one of the registry's names (``auto`` by suffix)."""
    from scenetag.model.backends.registry import backend_names  # imports no backend: --help stays instant

    return click.option(
        "--backend", type=click.Choice(backend_names()), default="auto", show_default=True,
        help="Inference backend; auto picks by the model file's suffix.",
    )(func)


def _thresholds_callback(ctx: click.Context, param: click.Parameter, value: str | None):
    try:
        return parse_thresholds(value)
    except DataError as exc:
        raise click.BadParameter(str(exc)) from None


def thresholds_option(help: str = "Tag at other thresholds than the model's, for this command only: "
                      "one value (0.2) or LABEL=T pairs (clear=0.4,haze=0.1; '*=T' for the rest).") \
        -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--thresholds T|LABEL=T,...``: thresholds instead of the spec's (parsed by :func:`parse_thresholds`)."""
    return click.option("--thresholds", default=None, metavar="T|LABEL=T,...", callback=_thresholds_callback,
                        help=help)


def tta_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--tta none|flips|d4``: test-time augmentation; the spec's (what its thresholds were fitted with) by default."""
    from scenetag.model.tta import TTA_MODES

    return click.option(
        "--tta", type=click.Choice(TTA_MODES), default=None,
        help="Test-time augmentation: average the probabilities over 2 (flips) or 8 (d4: rotations and "
        "flips) views of each chip, made on the batch in memory. Default: the TTA recorded in the "
        "model's spec, which its thresholds were calibrated with (another one gives a warning).",
    )(func)


# -- the scene job's options (run, batch) -------------------------------------------------------------


def parse_bands(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    """``"3,2,1"`` → ``(3, 2, 1)``."""
    if not value:
        return None
    try:
        bands = tuple(int(v) for v in value.replace(" ", "").split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of band numbers, e.g. 3,2,1") from None
    if any(b < 1 for b in bands):
        raise click.BadParameter(f"band numbers are 1-based (as in GDAL), got {value!r}")
    return bands


def job_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The scene job's options, shared by ``run`` and ``batch``."""
    opts = [
        model_option, spec_option,
        backend_option, device_option,
        click.option("--precision", type=click.Choice(["auto", "fp32", "int8", "bf16", "fp16"]), default="auto",
                     show_default=True,
                     help="Inference precision. auto: the model as it was made; for the shipped model, its "
                     "INT8 copy where OpenVINO runs it (the CPU), fp32 elsewhere. int8: the shipped INT8 copy, "
                     "or check that --model is INT8 (`scenetag quantize`). fp32: the fp32 model. bf16/fp16 "
                     "(autocast) need the torch backend; fp16 needs CUDA."),
        click.option("--bands", callback=parse_bands, metavar="I,J,K",
                     help="1-based scene bands in the model's band order, e.g. 3,2,1 for a "
                     "blue,green,red,nir scene and an RGB model. Default: by colour "
                     "interpretation, else the first bands."),
        click.option("--stride", type=click.IntRange(min=1), default=None,
                     help="Chip stride in model pixels. Default: the chip size (no overlap)."),
        click.option("--overlap", type=click.FloatRange(0, 1, max_open=True), default=None,
                     help="Overlap between neighbouring chips as a fraction, instead of --stride."),
        click.option("--edge", type=click.Choice(["shift", "pad", "skip"]), default="shift",
                     show_default=True,
                     help="Partial chips at the right and bottom edges: shift them inside the "
                     "scene, pad them with invalid pixels, or skip (and count) them."),
        click.option("--min-valid", type=click.FloatRange(0, 1), default=0.5, show_default=True,
                     help="Skip chips with a smaller share of valid pixels (GDAL mask: "
                     "nodata, alpha or mask band) without running the model."),
        click.option("--resample", is_flag=True,
                     help="Read chips at the model's ground resolution instead of the scene's "
                     "(the resolution warning and --dry-run say how many chips that makes)."),
        click.option("--resample-max-factor", type=click.FloatRange(min=1), default=DEFAULT_RESAMPLE_MAX_FACTOR,
                     show_default=True, metavar="N",
                     help="With --resample, refuse a scene more than N times coarser than the model "
                     "(N times coarser is N² times the chips): raise N to the factor the refusal "
                     "names to confirm the work."),
        batch_size_option,
        click.option("--reader", type=click.Choice(["auto", "threads", "processes"]), default="auto",
                     show_default=True,
                     help="How chips are read: threads (one chip per read; enough for a CPU model), "
                     "processes (runs of chips per read, into shared memory; what a GPU needs), "
                     "or auto (processes when the model runs on a GPU)."),
        click.option("--readers", type=click.IntRange(min=1), default=None,
                     help="Reader threads or processes. Default: 2 threads, or one process per "
                     "core less one."),
        click.option("--to-crs", default=None, metavar="CRS",
                     help="Write the vectors in this CRS, e.g. EPSG:4326. Default: the scene's."),
        click.option("--max-chips", type=click.IntRange(min=1), default=DEFAULT_MAX_CHIPS, show_default=True,
                     help="Refuse a scene that would classify more chips than this (checked before "
                     "reading it; a huge count is usually a wrong --stride)."),
        click.option("--asset", default=None, metavar="NAME",
                     help="For a STAC item: the asset to read, e.g. visual or analytic. Default: the image "
                     "asset whose bands (eo:bands) are the model's (with --bands: at those numbers); "
                     "the run says which it took and why."),
        click.option("--raster", is_flag=True,
                     help="Also write <output>_prob.tif: a COG heat map over the scene with one band "
                     "per label, each chip's probabilities over its cell (NaN where a chip was skipped)."),
        tta_option,
        thresholds_option(),
    ]
    for opt in reversed(opts):
        func = opt(func)
    return _with_config_provenance(func)


def _with_config_provenance(func: Callable[..., Any]) -> Callable[..., Any]:
    """Give the command the job option ``config``: what ``--config`` supplied, for the ``runs`` table."""
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from scenetag.config_file import provenance

        return func(*args, config=provenance(), **kwargs)
    return wrapper


def dry_run_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--dry-run`` and ``--format``: plan the scene job without classifying (``run``, ``batch``)."""
    opts = [
        click.option("--dry-run", is_flag=True,
                     help="Plan without classifying and write nothing: per scene the chips to classify, "
                     "edge chips skipped, bands used and why, stretch, resolution factor, outputs and "
                     "whether each is up to date, and what the job would do. The model is read for its "
                     "spec only, and the plan is made here (also with --scheduler). Exit code 1 when a "
                     "scene would be refused or fail."),
        click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
                     help="How --dry-run prints its plan on stdout: a table for people, or JSON."),
    ]

    @functools.wraps(func)
    def checked(*args: Any, dry_run: bool, fmt: str, **kwargs: Any) -> Any:
        if fmt != "table" and not dry_run:
            raise click.UsageError(f"--format {fmt} is how --dry-run prints its plan: add --dry-run")
        return func(*args, dry_run=dry_run, fmt=fmt, **kwargs)

    for opt in reversed(opts):
        checked = opt(checked)
    return checked


def print_plan(previews: Any, fmt: str, batch: bool) -> None:
    """Print a dry run's previews (:mod:`jobs.dry_run`) on stdout; exit code 1 when one would fail."""
    import json

    from scenetag.jobs.dry_run import batch_table, scene_table

    if fmt == "json":
        value = [p.to_dict() for p in previews] if batch else previews[0].to_dict()
        click.echo(json.dumps(value, indent=1))
    else:
        click.echo(batch_table(previews) if batch else scene_table(previews[0]))
    bad = [p for p in previews if p.would_fail]
    if bad:
        n = len(previews)
        raise ScenetagError(f"{len(bad)} of {n} scene{'s' if n != 1 else ''} would be refused or fail: "
                            "see the plan" if batch else f"the run would {bad[0].action}: {bad[0].reason}")


def output_file_option(help: str, required: bool = False,
                       also: tuple[str, ...] = ()) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``-o/--output FILE`` (also ``--out`` and the names in ``also``): the file a command writes."""
    return click.option(
        "-o", "--output", "--out", *also, "output", type=click.Path(dir_okay=False, path_type=Path),
        default=None, required=required, help=help,
    )


def out_dir_option(help: str, required: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``-d/--out-dir DIR`` (also ``--out``): the folder a command writes into."""
    return click.option(
        "-d", "--out-dir", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
        default=None, required=required, help=help,
    )


def parse_thresholds(text: str | None) -> float | dict[str, float] | None:
    """``"0.3"`` or ``"clear=0.4,haze=0.1"`` → a value or a label→value map (validated by the spec)."""
    if text is None:
        return None
    text = text.strip()
    try:
        if "=" not in text:
            return float(text)
        out = {}
        for part in text.split(","):
            key, _, value = part.partition("=")
            out[key.strip()] = float(value)
        return out
    except ValueError as exc:
        raise DataError(
            f"thresholds {text!r} are not a number or label=value pairs, e.g. 0.3 or clear=0.4,haze=0.1"
        ) from exc


def labelled_data_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The options of ``evaluate`` and ``calibrate`` that say which labelled chips to score, and how."""
    opts = [
        spec_option,
        click.option("--labels", "labels_csv", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="Kaggle/Planet CSV (image_name,tags). Default: DATA/../labels.csv."),
        click.option("--split", type=click.Choice(["val", "train", "all"]), default="val", show_default=True,
                     help="Which images: the validation split of the training run that made the model, "
                     "its training split, or every image in the CSV."),
        click.option("--split-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                     help="split.json written by train. Default: stored in or beside the model, "
                     "else rebuilt from the seed recorded in its spec."),
        backend_option,
        device_option,
        batch_size_option,
        click.option("--resize", is_flag=True, help="Resample images that are not the model's chip size."),
        click.option("--min-support", type=click.IntRange(min=1), default=5, show_default=True,
                     help="Labels with fewer positives are left out of macro-F1 (supported), "
                     "and keep the global threshold when calibrating."),
        tta_option,
    ]
    for opt in reversed(opts):
        func = opt(func)
    return func


def tqdm_progress(desc: str, enabled: bool, unit: str = "chip"):
    """A factory of progress callbacks drawing a tqdm bar on stderr: ``factory(total)`` → ``update(n)``."""
    def factory(total: int):
        from tqdm import tqdm

        bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not enabled,
                   dynamic_ncols=True, leave=False)

        def update(n: int) -> None:
            bar.update(n)
            if bar.n >= bar.total:
                bar.close()
        return update
    return factory


def announce_cluster(info: Any) -> None:
    """Print the Dask cluster and its dashboard link on stderr (``announce`` of :func:`jobs.cluster.connect`)."""
    quiet_third_party()  # again: importing distributed set its own levels
    where = "LocalCluster" if info.local else f"cluster at {info.scheduler}"
    click.echo(f"Dask {where}: {info.n_workers} workers, {info.n_threads} threads", err=True)
    if info.dashboard:
        click.echo(f"Dask dashboard: {info.dashboard}", err=True)
