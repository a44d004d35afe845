"""What the CLI commands share, defined once: error handling, logging, and the shared options.

Each shared option is a decorator here (as ``rasterio/rio/options.py`` does),
so the same thing has the same name, default and help in every command;
commands import this module, never each other.
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Any, Callable

import click

from scenetag.errors import DataError, ScenetagError


class ScenetagClickError(click.ClickException):
    """A library error shown as one line, with the error's own exit code."""

    def __init__(self, error: ScenetagError) -> None:
        super().__init__(str(error))
        self.exit_code = error.exit_code


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn :class:`ScenetagError` (and interrupts) into one-line CLI errors."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ScenetagError as exc:
            logging.getLogger("scenetag").debug("error detail", exc_info=True)
            raise ScenetagClickError(exc) from exc
        except KeyboardInterrupt:
            click.echo("interrupted: no output was written", err=True)
            sys.exit(130)

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
    quiet_third_party()


def quiet_third_party() -> None:
    """Keep third-party chatter out of our logs: at WARNING, or at ours where that is higher.

    Call it again after importing ``distributed``, which sets its own levels on import.
    """
    level = max(logging.WARNING, logging.getLogger().level)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(level)


def announce_cluster(info) -> None:
    """Print the Dask cluster and its dashboard link on stderr (``announce`` of :func:`jobs.cluster.connect`)."""
    where = "LocalCluster" if info.local else f"cluster at {info.scheduler}"
    click.echo(f"Dask {where}: {info.n_workers} workers, {info.n_threads} threads", err=True)
    if info.dashboard:
        click.echo(f"Dask dashboard: {info.dashboard}", err=True)


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


def load_model(model_path, spec_path, backend, device, precision="fp32"):
    """Load the predictor for CLI commands (the shipped default when no path is given)."""
    from scenetag.model.backends import create_predictor
    from scenetag.model.default import default_model_path
    from scenetag.model.spec import ModelSpec

    path = model_path or default_model_path()
    spec = ModelSpec.from_file(spec_path) if spec_path else None
    return create_predictor(path, backend=backend, device=device, spec=spec, precision=precision)


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
        help="Progress bar on stderr. Default: on when stderr is a terminal.",
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
    ]
    for opt in reversed(opts):
        func = opt(func)
    return func
