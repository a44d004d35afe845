"""scenetag: tag georeferenced scenes with a multi-label chip classifier.

The subpackages follow the data: :mod:`scenetag.tiler` cuts a scene into
chips, :mod:`scenetag.model` turns chips into probabilities and tags,
:mod:`scenetag.outputs_schema` declares and writes the outputs, and
:mod:`scenetag.jobs` orchestrates them.  This package holds what they share:
the version, the error hierarchy, environment settings and the command line.

In a source checkout those subpackages are the folders beside this one (the
project's layout); ``setup.cfg`` installs them under ``scenetag``
(``package_dir``), so nothing generic lands at the top of site-packages.
Here the checkout's folders are added to this package's search path, so
``import scenetag.tiler`` means the same with or without an install.
"""

from pathlib import Path as _Path

__version__ = "0.1.0"

_checkout = _Path(__file__).resolve().parent.parent
if (_checkout / "setup.cfg").is_file() and (_checkout / "tiler" / "__init__.py").is_file():
    __path__.append(str(_checkout))  # type: ignore[name-defined]  # noqa: F821
del _Path, _checkout

#: The library's public functions, imported on first use so ``import scenetag`` (and ``--help``) stays light.
_API = {"run_scene": "scenetag.api", "run_batch": "scenetag.api", "read_chips": "scenetag.api",
        "load_model": "scenetag.api", "RunOptions": "scenetag.jobs.options"}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'scenetag' has no attribute {name!r}")
