"""Build small, real models for tests: a timm network exported to ONNX with a spec."""

from __future__ import annotations

from pathlib import Path

from model.spec import ModelSpec

TINY_LABELS = ("clear", "cloudy", "primary", "water", "it's; DROP TABLE chips--")


def tiny_spec(chip_size: int = 64, resolution_m: float = 10.0, labels=TINY_LABELS) -> ModelSpec:
    return ModelSpec.create(
        name="tiny-test", arch="mobilenetv3_small_050", labels=labels,
        thresholds=[0.45, 0.5, 0.5, 0.55, 0.5][: len(labels)] + [0.5] * max(0, len(labels) - 5),
        chip_size=chip_size, resolution_m=resolution_m,
    )


def export_tiny_model(path: Path, spec: ModelSpec | None = None, seed: int = 0) -> Path:
    """Export a random-weight timm model with ``spec`` in the ONNX metadata."""
    import onnx
    import timm
    import torch

    from model.spec import METADATA_KEY

    spec = spec or tiny_spec()
    torch.manual_seed(seed)
    net = timm.create_model(spec.arch, pretrained=False, num_classes=spec.n_labels)
    wrapped = torch.nn.Sequential(net, torch.nn.Sigmoid()).eval()
    x = torch.randn(2, spec.n_bands, spec.chip_size, spec.chip_size)
    torch.onnx.export(wrapped, (x,), str(path), input_names=["input"], output_names=["probabilities"],
                      dynamic_axes={"input": {0: "batch"}, "probabilities": {0: "batch"}},
                      opset_version=17, dynamo=False)
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, spec.to_json()
    onnx.save(proto, str(path))
    return path
