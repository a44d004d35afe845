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

from scenetag.errors import ScenetagError


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


def read_spec(spec_path: str | Path | None):
    """The :class:`~model.spec.ModelSpec` in the ``--spec`` file, or None without one."""
    if not spec_path:
        return None
    from scenetag.model.spec import ModelSpec

    return ModelSpec.from_json(Path(spec_path).read_text())


def load_model(model_path, spec_path, backend, device, precision="fp32"):
    """Load the predictor for CLI commands (the shipped default when no path is given)."""
    from scenetag.model.default import default_model_path
    from scenetag.model.predictor import load_predictor

    path = model_path or default_model_path()
    return load_predictor(path, backend=backend, device=device, spec=read_spec(spec_path), precision=precision)


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
