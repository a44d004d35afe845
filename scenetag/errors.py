"""One error hierarchy for the whole project.

Every error raised on purpose derives from :class:`ScenetagError`.  Where a
builtin fits, the subclass inherits it too, so ``except OSError`` still catches
an unreadable scene.  Messages name the offending value and, where there is
one, the fix.
"""

from __future__ import annotations


class ScenetagError(Exception):
    """Root of every error scenetag raises on purpose."""

    #: Process exit code the CLI uses for this error.
    exit_code: int = 1


class SceneError(ScenetagError):
    """A scene cannot be used as given."""


class SceneReadError(SceneError, OSError):
    """The scene is missing, not a raster, or corrupt."""


class RemoteSceneError(SceneReadError):
    """A scene at a URL or in object storage cannot be reached or is not what was asked for.

    ``status`` is the HTTP status the server answered (None when there was no
    answer), ``reason`` what went wrong without one (``"timeout"``,
    ``"refused"``, ``"dns"``, ``"reset"``, ``"redirects"``, ``"html"``...).
    Whether it is tried again is :func:`scenetag.jobs.failures.is_retryable`'s
    decision, from these two.
    """

    def __init__(self, message: str, *, status: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason

    def __reduce__(self):  # keyword arguments survive pickling (Dask sends errors between processes)
        return (_remote_error, (str(self), self.status, self.reason))


def _remote_error(message: str, status: int | None, reason: str) -> "RemoteSceneError":
    return RemoteSceneError(message, status=status, reason=reason)


class StacError(SceneError, ValueError):
    """A STAC item cannot be used as a scene: unreadable, no usable asset, several, or bands that don't fit."""


class GeoreferenceError(SceneError, ValueError):
    """The scene has no CRS or no geotransform."""


class BandError(SceneError, ValueError):
    """Band selection does not fit the scene or the model."""


class ModelError(ScenetagError):
    """A model cannot be loaded or used."""


class ModelLoadError(ModelError, OSError):
    """The model file is missing or corrupt."""


class ModelSpecError(ModelError, ValueError):
    """The model spec is missing or invalid."""


class ChipLimitError(SceneError, ValueError):
    """The scene and options would classify more chips than the job allows (``--max-chips``)."""


class OutputError(ScenetagError, OSError):
    """An output cannot be written."""


class DiskFullError(OutputError):
    """The disk (or quota) holding an output is full: no scene can be written until room is made."""


class OutputExistsError(OutputError, FileExistsError):
    """The output exists and overwriting was not asked for."""


class OptionError(ScenetagError, ValueError):
    """A job option is out of range or contradicts another."""


class ConfigError(OptionError):
    """The ``--config`` file cannot be read or does not fit the commands; a command-line error (exit 2)."""

    exit_code = 2


class DataError(ScenetagError, ValueError):
    """Training or evaluation data is unusable."""


class LockedError(ScenetagError):
    """Another run holds the lock on an output folder."""

    exit_code = 3


class MissingDependencyError(ScenetagError, ImportError):
    """An optional dependency is not installed; the message names the extra."""


def chain(exc: BaseException):
    """``exc`` and the errors that caused it (``__cause__``, else ``__context__``), each once, nearest first."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def require(module: str, *extras: str):
    """Import ``module`` or raise :class:`MissingDependencyError` naming the extras that bring it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the install
        hint = " or ".join(f"pip install 'scenetag[{e}]'" for e in extras)
        raise MissingDependencyError(f"{module} is not installed: {hint}") from exc
