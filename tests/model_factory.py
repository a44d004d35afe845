"""Build small, real models for tests: a timm network exported by scenetag's own exporter."""

from __future__ import annotations

from pathlib import Path

from scenetag.model.spec import ModelSpec
from tests.model_fixtures import SMALL_ARCH as TINY_ARCH, small_model, small_spec

TINY_LABELS = ("clear", "cloudy", "primary", "water", "it's; DROP TABLE chips--")


def tiny_spec(chip_size: int = 64, resolution_m: float = 10.0, labels=TINY_LABELS) -> ModelSpec:
    """The test model's spec: five labels (one hostile), thresholds that differ per label."""
    thresholds = [0.45, 0.5, 0.5, 0.55, 0.5][: len(labels)] + [0.5] * max(0, len(labels) - 5)
    return small_spec(labels, chip_size, TINY_ARCH, thresholds, name="tiny-test", resolution_m=resolution_m)


#: The random-weight timm network behind :func:`export_tiny_model` (logits, eval mode).
tiny_network = small_model


def export_tiny_model(path: Path, spec: ModelSpec | None = None, seed: int = 0) -> Path:
    """Export a random-weight timm model with ``spec`` in the ONNX metadata."""
    from scenetag.model.export import export_onnx

    spec = spec or tiny_spec()
    export_onnx(tiny_network(spec, seed), spec, path, overwrite=True, n_random=1)
    return Path(path)
