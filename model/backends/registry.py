"""Backends by name: the registry behind :func:`create_predictor`, as timm's ``create_model``.

A backend is registered by the path of its predictor class, so listing the
names (the CLI's ``--backend`` choices) imports neither ONNX Runtime nor torch.
Adding a backend is one module with a class that takes
``(path, device=, spec=, precision=)`` plus one :func:`register_backend` line below.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from scenetag.errors import ModelLoadError, OptionError
from scenetag.model.backends.base import Predictor, check_device, is_gpu_device
from scenetag.model.spec import ModelSpec

#: The name that picks a backend by the model file's suffix.
AUTO = "auto"
#: The backend "auto" takes for a suffix no backend claims.
FALLBACK = "onnx"
#: The backend "auto" takes for an ONNX model on the CPU, where it is installed (see :func:`auto_backend`).
CPU_BACKEND = "openvino"
#: ``--precision`` values.  "auto" and "int8" run a model in the precision it was made in (for the
#: shipped default, they choose which of its files runs: :func:`scenetag.model.default.default_for`);
#: "int8" also checks that it is an INT8 model.  bf16/fp16 are the torch backend's autocast.
PRECISIONS = ("auto", "fp32", "int8", "bf16", "fp16")
#: The precisions in which a model runs as it was made.
AS_MADE = ("auto", "int8")


@dataclass(frozen=True)
class BackendEntry:
    """A registered backend: its name, ``"module:Class"`` of its predictor, and the file suffixes it claims."""

    name: str
    target: str
    suffixes: tuple[str, ...] = ()

    def load(self) -> type:
        """The predictor class (imports the backend's module)."""
        module, _, cls = self.target.partition(":")
        return getattr(importlib.import_module(module), cls)


_registry: dict[str, BackendEntry] = {}


def register_backend(name: str, target: str, suffixes: tuple[str, ...] = ()) -> None:
    """Register a predictor class (``"package.module:Class"``) under ``name``; ``suffixes`` route "auto" to it."""
    if name == AUTO:
        raise ValueError(f"{AUTO!r} is reserved: it picks a backend by suffix")
    _registry[name] = BackendEntry(name, target, tuple(s.lower() for s in suffixes))


def unregister_backend(name: str) -> None:
    """Remove a registered backend (for tests and plugins)."""
    _registry.pop(name, None)


def backend_names() -> tuple[str, ...]:
    """The names ``create_predictor`` accepts, "auto" first."""
    return (AUTO, *_registry)


def backend_for(path: str | Path) -> str:
    """The backend "auto" picks for a model file: the one claiming its suffix, else ONNX Runtime."""
    suffix = Path(path).suffix.lower()
    return next((e.name for e in _registry.values() if suffix in e.suffixes), FALLBACK)


def suffixes_of(name: str) -> tuple[str, ...]:
    """The file suffixes the backend ``name`` claims (its model files)."""
    return _entry(name).suffixes


def _entry(name: str) -> BackendEntry:
    try:
        return _registry[name]
    except KeyError:
        raise ModelLoadError(f"backend {name!r} is unknown: use one of {', '.join(backend_names())}") from None


def create_predictor(
    path: str | Path,
    backend: str = AUTO,
    device: str = "auto",
    spec: ModelSpec | None = None,
    precision: str = "fp32",
    tta: str | None = None,
) -> Predictor:
    """Load a model file as a :class:`~scenetag.model.backends.base.Predictor`.

    Args:
        path: Model file (ONNX, or a torch checkpoint).
        backend: A name from :func:`backend_names`; "auto" picks by the file's suffix and
            the device (:func:`auto_backend`).
        device: "auto" (a GPU when the backend has one), "cpu", "cuda" or "cuda:N".
        spec: A spec that replaces (or supplies) the one stored with the model.
        precision: One of :data:`PRECISIONS`: "auto" or "int8" (the model as it was made;
            "int8" checks that it is INT8), "fp32", or "bf16"/"fp16" where the backend supports them.
        tta: Test-time augmentation ("none", "flips", "d4"); default: the spec's
            (see :func:`~scenetag.model.backends.tta.with_tta`).
    """
    from scenetag.model.backends.tta import with_tta

    path = _model_file(path)
    device = check_device(device)
    if precision not in PRECISIONS:
        raise OptionError(f"precision {precision!r} is unknown: use one of {', '.join(PRECISIONS)}")
    run_as = "fp32" if precision in AS_MADE else precision  # what the backend is asked for
    entry = _entry(auto_backend(path, device, run_as) if backend == AUTO else backend)
    predictor = entry.load()(path, device=device, spec=spec, precision=run_as)
    if precision == "int8" and not predictor.spec.quantized:
        raise OptionError(f"--precision int8: model {str(path)!r} is not an INT8 model; make one with "
                          f"`scenetag quantize {path} --chips DIR` and pass it with --model")
    return with_tta(predictor, tta)


def read_model_spec(path: str | Path, backend: str = AUTO, spec: ModelSpec | None = None) -> ModelSpec:
    """The spec a model file would be run with, loading no more of it than that needs (a dry run).

    ``spec`` wins, as in :func:`create_predictor`; an ONNX file's spec is read
    from its metadata on the CPU; other backends load the model on the CPU.
    """
    path = _model_file(path)
    if spec is not None:
        return spec
    name = backend_for(path) if backend == AUTO else backend
    if name in ("onnx", CPU_BACKEND):  # both run the ONNX file and its metadata
        from scenetag.model.backends.onnx_backend import read_onnx_spec

        return read_onnx_spec(path)
    return create_predictor(path, name, device="cpu").spec


def _model_file(path: str | Path) -> Path:
    """``path`` if it is a file; else :class:`ModelLoadError` saying what it is."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"model {str(path)!r} does not exist: pass --model PATH to a model file "
                             "(.onnx, or a checkpoint with --backend torch)")
    if not path.is_file():
        raise ModelLoadError(f"model {str(path)!r} is not a file")
    return path


def auto_backend(path: str | Path, device: str = "auto", precision: str = "fp32") -> str:
    """The backend "auto" takes for ``path`` on ``device``.

    By the file's suffix (:func:`backend_for`), except that an ONNX model that
    runs on the CPU (``--device cpu``, or no GPU provider in ONNX Runtime) goes
    to OpenVINO where it is installed: it ran the same model 1.3x faster than
    ONNX Runtime on the CPU, INT8 models more so (docs/performance.md, "OpenVINO").
    """
    name = backend_for(path)
    if (name != FALLBACK or precision not in ("fp32", *AS_MADE) or CPU_BACKEND not in _registry
            or is_gpu_device(device)):
        return name
    if device == "auto" and _ort_has_gpu():
        return name
    from scenetag.model.backends.openvino_backend import available

    return CPU_BACKEND if available() else name


def _ort_has_gpu() -> bool:
    """Whether the installed ONNX Runtime has a GPU provider (so "auto" would run on a GPU)."""
    try:
        import onnxruntime
    except ImportError:
        return False
    from scenetag.model.backends.onnx_backend import GPU_PROVIDERS

    return any(p in GPU_PROVIDERS for p in onnxruntime.get_available_providers())


register_backend("onnx", "scenetag.model.backends.onnx_backend:OnnxPredictor", (".onnx",))
# No suffix: it reads the same .onnx files; "auto" routes to it on the CPU (auto_backend).
register_backend("openvino", "scenetag.model.backends.openvino_backend:OpenVinoPredictor")
register_backend("torch", "scenetag.model.backends.torch_backend:TorchPredictor", (".pt", ".pth", ".ckpt"))
