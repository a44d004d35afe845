"""The default model shipped with scenetag (see MODEL_CARD.md beside it)."""

from __future__ import annotations

from pathlib import Path

from scenetag.errors import ModelLoadError

DEFAULT_MODEL = Path(__file__).with_name("scenetag-default.onnx")


def default_model_path() -> Path:
    """Path of the shipped default model."""
    if not DEFAULT_MODEL.exists():
        raise ModelLoadError(
            f"the default model {str(DEFAULT_MODEL)!r} is missing from this install: "
            "pass --model PATH, or rebuild it with `make default-model`"
        )
    return DEFAULT_MODEL
