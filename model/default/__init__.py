"""The default model shipped with scenetag, and which of its two files a run takes.

Two files ship (see MODEL_CARD.md and MODEL_CARD_INT8.md beside them): the
fp32 model, and an INT8 copy made from it by ``scenetag quantize`` that stays
within the accuracy bar (under 1% of tag decisions changed, samples-F2 within
0.01).  The INT8 file is what ``--precision auto`` takes where OpenVINO runs
the model (the CPU, with the ``openvino`` extra installed): it was the fastest
CPU engine measured (docs/performance.md, "INT8").  Everywhere else, and with
``--precision fp32``, the fp32 file runs.
"""

from __future__ import annotations

from pathlib import Path

from scenetag.errors import ModelLoadError

DEFAULT_MODEL = Path(__file__).with_name("scenetag-default.onnx")
#: The INT8 copy of :data:`DEFAULT_MODEL` (``scenetag quantize``, recipe keep-ends-bc).
DEFAULT_INT8 = Path(__file__).with_name("scenetag-default-int8.onnx")


def default_model_path(int8: bool = False) -> Path:
    """Path of the shipped default model (its INT8 copy with ``int8``)."""
    path = DEFAULT_INT8 if int8 else DEFAULT_MODEL
    if not path.exists():
        raise ModelLoadError(
            f"the default model {str(path)!r} is missing from this install: "
            "pass --model PATH, or rebuild it with `make default-model`"
        )
    return path


def default_for(backend: str = "auto", device: str = "auto", precision: str = "auto") -> Path:
    """The shipped default file a run with these options takes.

    ``precision`` "int8" takes the INT8 copy; "auto" takes it where the
    backend is (or "auto" resolves to) OpenVINO, and the fp32 file elsewhere
    (a GPU, ONNX Runtime, torch), as does any other precision.
    """
    from scenetag.model.backends.registry import CPU_BACKEND, auto_backend

    if precision == "int8":
        return default_model_path(int8=True)
    if precision == "auto":
        engine = auto_backend(DEFAULT_MODEL, device) if backend == "auto" else backend
        if engine == CPU_BACKEND and DEFAULT_INT8.exists():
            return DEFAULT_INT8
    return default_model_path()
