"""Build small, real models for tests: a timm network exported by scenetag's own exporter."""

from __future__ import annotations

from pathlib import Path

from model.spec import ModelSpec

TINY_ARCH = "mobilenetv3_small_050"
TINY_LABELS = ("clear", "cloudy", "primary", "water", "it's; DROP TABLE chips--")


def tiny_spec(chip_size: int = 64, resolution_m: float = 10.0, labels=TINY_LABELS) -> ModelSpec:
    return ModelSpec.create(
        name="tiny-test", arch=TINY_ARCH, labels=labels,
        thresholds=[0.45, 0.5, 0.5, 0.55, 0.5][: len(labels)] + [0.5] * max(0, len(labels) - 5),
        chip_size=chip_size, resolution_m=resolution_m,
    )


def tiny_network(spec: ModelSpec, seed: int = 0):
    """The random-weight timm network behind :func:`export_tiny_model` (logits, eval mode)."""
    import torch

    from model.nets import build_model

    torch.manual_seed(seed)
    return build_model(spec, pretrained=False).eval()


def export_tiny_model(path: Path, spec: ModelSpec | None = None, seed: int = 0) -> Path:
    """Export a random-weight timm model with ``spec`` in the ONNX metadata."""
    from model.export import export_onnx

    spec = spec or tiny_spec()
    export_onnx(tiny_network(spec, seed), spec, path, overwrite=True, n_random=1)
    return Path(path)
