"""Export a network to ONNX with its spec, and verify it against torch.

The exported graph takes one float32 NCHW input, already normalised by
:func:`model.preprocess.normalize`, with a dynamic batch axis, and returns
sigmoid probabilities ``(N, L)`` (the sigmoid is inside the graph).  The spec
is stored as JSON in ``metadata_props[METADATA_KEY]``.  Every export is
checked with ``onnx.checker`` and compared with ONNX Runtime on random and,
where given, real chips; a difference above the tolerance is an error.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

from scenetag.model.backends.onnx_backend import OnnxPredictor
from scenetag.model.spec import METADATA_KEY, ModelSpec
from scenetag.atomic import atomic_path
from scenetag.errors import ModelError, OutputExistsError, require

log = logging.getLogger(__name__)

OPSET = 17
TOLERANCE = 1e-4
INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"


def _with_sigmoid(model):
    """The network with sigmoid outputs: what the ONNX file computes."""
    import torch

    return torch.nn.Sequential(model, torch.nn.Sigmoid()).eval()


def set_onnx_spec(proto, spec: ModelSpec) -> None:
    """Put ``spec`` into an ONNX model's ``metadata_props`` (replacing any stored one)."""
    keep = [p for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    for p in keep:
        proto.metadata_props.add(key=p.key, value=p.value)
    proto.metadata_props.add(key=METADATA_KEY, value=spec.to_json())


def rewrite_onnx_spec(src: str | Path, dst: str | Path, spec: ModelSpec, *, replace: bool = False) -> Path:
    """Copy an ONNX model with another spec (e.g. calibrated thresholds), atomically; ``dst`` replaced only with ``replace``."""
    onnx = require("onnx", "torch")
    proto = onnx.load(str(src))
    old = None
    for p in proto.metadata_props:
        if p.key == METADATA_KEY:
            old = ModelSpec.from_json(p.value)
    if old is not None and old.labels != spec.labels:
        raise ModelError(f"new spec labels {list(spec.labels)} differ from the model's {list(old.labels)}")
    set_onnx_spec(proto, spec)
    with atomic_path(dst, replace=replace) as tmp:
        onnx.save(proto, str(tmp))
    return Path(dst)


def compare(model, predictor: OnnxPredictor, chips: np.ndarray) -> float:
    """Max absolute probability difference between torch ``model`` and the ORT ``predictor`` on uint8 ``chips``."""
    import torch

    from scenetag.model.preprocess import normalize

    x = normalize(chips, predictor.spec)
    with torch.inference_mode():
        ref = torch.sigmoid(model.eval()(torch.from_numpy(x))).numpy()
    got = predictor.predict(chips)
    if got.shape != ref.shape:
        raise ModelError(f"ONNX output shape {got.shape} differs from torch's {ref.shape}")
    return float(np.abs(got - ref).max())


def export_onnx(
    model,
    spec: ModelSpec,
    out: str | Path,
    real_chips: np.ndarray | None = None,
    opset: int = OPSET,
    tolerance: float = TOLERANCE,
    overwrite: bool = False,
    n_random: int = 4,
    seed: int = 0,
) -> dict:
    """Export ``model`` (logits) as ONNX probabilities with ``spec``, check and verify it.

    Returns a report: path, opset, sizes, and the max probability difference
    torch vs ORT on ``n_random`` random chips and on ``real_chips``.
    """
    import torch

    onnx = require("onnx", "torch")
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists: pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.cpu().float().eval()
    # channels_last is a training-speed layout only; export the plain one.
    model = model.to(memory_format=torch.contiguous_format)
    wrapped = _with_sigmoid(model)
    size = spec.chip_size
    dummy = torch.zeros(2, spec.n_bands, size, size)
    rng = np.random.default_rng(seed)
    report = {"path": str(out), "opset": opset, "tolerance": tolerance}
    with atomic_path(out, replace=overwrite) as tmp:
        with torch.inference_mode(), warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of dynamo, which needs a
            # static-shape trace of timm's TF-"same" padding; the legacy one is verified below.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                wrapped, (dummy,), str(tmp), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=opset, dynamo=False, do_constant_folding=True,
            )
        proto = onnx.load(str(tmp))
        set_onnx_spec(proto, spec)
        proto.producer_name = "scenetag"
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))
        ort_model = OnnxPredictor(tmp, device="cpu", spec=spec)  # the network was traced on the CPU
        random_chips = rng.integers(0, 256, (n_random, spec.n_bands, size, size), dtype=np.uint8)
        report["max_diff_random"] = compare(model, ort_model, random_chips)
        report["n_random"] = n_random
        if real_chips is not None and len(real_chips):
            report["max_diff_real"] = compare(model, ort_model, real_chips)
            report["n_real"] = int(len(real_chips))
        worst = max(v for k, v in report.items() if k.startswith("max_diff"))
        report["max_diff"] = worst
        if worst > tolerance:  # raised inside the block: the temporary file goes, nothing is renamed
            raise ModelError(
                f"ONNX export differs from torch by {worst:.2e} (tolerance {tolerance:.0e}): "
                f"try another --opset than {opset}"
            )
    report["bytes"] = out.stat().st_size
    log.info("exported %s: max prob diff torch vs ORT %.2e", out, worst)
    return report
