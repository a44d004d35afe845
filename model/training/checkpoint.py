"""Our checkpoints, and importing plain state dicts and Lightning checkpoints.

Our format is one ``torch.save`` dict, readable with ``weights_only=True``::

    {"format": "scenetag-checkpoint", "version": 1,
     "spec": "<ModelSpec JSON>", "state_dict": {...},
     "epoch": int, "optimizer": {...} | None, "scheduler": {...} | None,
     "best_score": float | None, "history": [...], "train_config": {...}}

A spec JSON file is also written beside it (``<name>.spec.json``) so a person
can read it.  Foreign checkpoints (a plain state dict, or a Lightning
checkpoint whose ``state_dict`` keys carry a ``model.`` prefix) carry no spec:
the architecture and labels come from a spec file or from options.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from scenetag.model.spec import ModelSpec, expand_thresholds
from scenetag.atomic import atomic_path
from scenetag.errors import ModelLoadError, ModelSpecError

log = logging.getLogger(__name__)

FORMAT = "scenetag-checkpoint"
VERSION = 1
#: Prefixes that wrappers add to parameter names: DataParallel/DDP, torch.compile, Lightning.
STRIP_PREFIXES = ("module.", "_orig_mod.", "model.")


def spec_path_for(path: str | Path) -> Path:
    """Where the readable spec beside a checkpoint lives."""
    path = Path(path)
    return path.with_name(path.stem + ".spec.json")


def save_checkpoint(
    path: str | Path,
    model,
    spec: ModelSpec,
    epoch: int = 0,
    optimizer=None,
    scheduler=None,
    *,
    replace: bool = False,
    **meta: Any,
) -> Path:
    """Write a checkpoint atomically (temporary name, then rename) and its spec beside it.

    An existing checkpoint (or spec) is replaced only with ``replace``; else
    :class:`~scenetag.errors.OutputExistsError`.
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "spec": spec.to_json(),
        "state_dict": state,
        "epoch": int(epoch),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        **meta,
    }
    with atomic_path(path, replace=replace) as tmp:
        torch.save(payload, tmp)
    with atomic_path(spec_path_for(path), replace=replace) as tmp:
        tmp.write_text(spec.to_json() + "\n")
    return path


def _unwrap(model):
    for attr in ("module", "_orig_mod"):
        while hasattr(model, attr) and hasattr(getattr(model, attr), "state_dict"):
            model = getattr(model, attr)
    return model


def strip_prefixes(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Remove wrapper prefixes (``module.``, ``_orig_mod.``, ``model.``) from parameter names.

    When some keys carry ``model.`` and others do not (a Lightning module's
    loss buffers, metrics), only the ``model.`` keys are the network's; the
    others are dropped and logged.
    """
    keys = list(state_dict)
    out = dict(state_dict)
    while True:
        changed = False
        for prefix in STRIP_PREFIXES:
            with_prefix = [k for k in out if k.startswith(prefix)]
            if not with_prefix:
                continue
            if len(with_prefix) < len(out):
                dropped = sorted(k for k in out if not k.startswith(prefix))
                log.info("dropping %d non-network keys from the checkpoint: %s", len(dropped), dropped[:5])
            out = {k[len(prefix):]: out[k] for k in with_prefix}
            changed = True
        if not changed:
            break
    if not out and keys:
        raise ModelLoadError(f"checkpoint has no network weights after stripping prefixes; keys were {keys[:5]}")
    return out


def read_checkpoint(path: str | Path, data: bytes | None = None) -> dict:
    """Load a checkpoint file as a dict with ``weights_only=True``.

    With ``data`` the checkpoint is read from those bytes and ``path`` only
    names it (a model shipped to a Dask worker, which may not see the file).
    """
    import io

    import torch

    path = Path(path)
    if data is None and not path.is_file():
        raise ModelLoadError(f"checkpoint {str(path)!r} does not exist")
    try:
        raw = torch.load(io.BytesIO(data) if data is not None else path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError ...
        raise ModelLoadError(
            f"checkpoint {str(path)!r} cannot be loaded with weights_only=True: {exc}. "
            "Only tensors and plain containers are accepted; re-save the state dict"
        ) from exc
    if not isinstance(raw, Mapping):
        raise ModelLoadError(f"checkpoint {str(path)!r} holds a {type(raw).__name__}, not a dict of weights")
    return dict(raw)


def resolve_spec(
    raw: Mapping[str, Any],
    spec: ModelSpec | None = None,
    arch: str | None = None,
    labels: Sequence[str] | None = None,
    thresholds: float | Sequence[float] | Mapping[str, float] | None = None,
    name: str | None = None,
    build_options: bool = False,
) -> ModelSpec:
    """The spec for a checkpoint: an explicit spec, else the stored one, else built from options.

    ``arch``, ``labels`` and ``thresholds`` override the fields of the spec
    they are given with.  ``build_options`` says that the caller's command
    takes ``--arch`` and ``--labels`` (export): the messages name them only then.
    """
    if spec is None and isinstance(raw.get("spec"), str):
        spec = ModelSpec.from_json(raw["spec"])
    if spec is None:
        hp = raw.get("hyper_parameters") if isinstance(raw.get("hyper_parameters"), Mapping) else {}
        arch = arch or hp.get("arch") or hp.get("model_name")
        labels = labels or hp.get("labels") or hp.get("classes")
        if not arch or not labels:
            raise ModelSpecError(
                "checkpoint carries no scenetag spec: pass --spec SPEC.json, or --arch NAME and "
                "--labels (a CSV, or names separated by commas)" if build_options else
                "checkpoint carries no scenetag spec: pass --spec SPEC.json with its labels and "
                "architecture (see README)"
            )
        return ModelSpec.create(name or Path(str(arch)).name, str(arch), list(labels),
                                thresholds if thresholds is not None else 0.2)
    changes: dict[str, Any] = {}
    if arch:
        changes["arch"] = arch
    if name:
        changes["name"] = name
    if labels:
        labels = tuple(labels)
        changes["labels"] = labels
        if labels != spec.labels:
            # The stored thresholds belong to other labels: restart from the given ones or 0.2.
            changes["thresholds"] = expand_thresholds(thresholds if thresholds is not None else 0.2, labels)
            thresholds = None
    if changes:
        spec = replace(spec, **changes)
    if thresholds is not None:
        spec = spec.with_thresholds(thresholds)
    return spec


def network_state_dict(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The network weights inside a checkpoint dict (ours, Lightning's, or a plain state dict)."""
    import torch

    if "state_dict" in raw and isinstance(raw["state_dict"], Mapping):
        sd = raw["state_dict"]
    elif "model" in raw and isinstance(raw["model"], Mapping):
        sd = raw["model"]
    else:
        sd = raw
    tensors = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelLoadError(f"checkpoint has no tensors; top-level keys are {sorted(raw)[:10]}")
    return strip_prefixes(tensors)


def load_weights(model, state_dict: Mapping[str, Any], spec: ModelSpec, build_options: bool = False) -> None:
    """Load weights into ``model``, or raise :class:`ModelLoadError` naming both shapes.

    The fix named is ``--labels``/``--arch`` with ``build_options`` (as :func:`resolve_spec`), else ``--spec``.
    """
    own = model.state_dict()
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    head_name = None
    if head is not None and hasattr(head, "weight"):
        head_name = next((n for n, p in model.named_parameters() if p is head.weight), None)
    if head_name and head_name in state_dict and tuple(state_dict[head_name].shape) != tuple(own[head_name].shape):
        got = tuple(state_dict[head_name].shape)
        raise ModelLoadError(
            f"checkpoint classifier {head_name} has shape {got} ({got[0]} classes) but the spec "
            f"has {spec.n_labels} labels, so {spec.arch} expects {tuple(own[head_name].shape)}: "
            + (f"pass --labels with the {got[0]} labels the checkpoint was trained on" if build_options else
               f"pass --spec with the {got[0]} labels the checkpoint was trained on")
        )
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shape_bad = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shape_bad:
        raise ModelLoadError(
            f"checkpoint does not fit architecture {spec.arch!r} ({len(own)} tensors; checkpoint has "
            f"{len(state_dict)}): missing {missing[:3]}, unexpected {unexpected[:3]}, "
            f"shape mismatches {shape_bad[:3]}: "
            + ("pass the --arch the checkpoint was trained with" if build_options else
               "pass --spec with the architecture the checkpoint was trained with")
        )
    model.load_state_dict(state_dict)


def load_checkpoint(
    path: str | Path,
    spec: ModelSpec | None = None,
    arch: str | None = None,
    labels: Sequence[str] | None = None,
    thresholds: float | Sequence[float] | Mapping[str, float] | None = None,
    build_options: bool = False,
    data: bytes | None = None,
):
    """Load any supported checkpoint into a network (``build_options`` as in :func:`resolve_spec`).

    ``data``: the checkpoint's bytes, read instead of the file (:func:`read_checkpoint`).

    Returns ``(model, spec, raw)``: the model in eval mode on the CPU, its
    spec, and the raw checkpoint dict (epoch, optimizer state for resuming).
    """
    from scenetag.model.training.nets import build_model

    raw = read_checkpoint(path, data)
    if spec is None and "spec" not in raw:
        sidecar = spec_path_for(path)
        if sidecar.is_file():
            spec = ModelSpec.from_json(sidecar.read_text())
    spec = resolve_spec(raw, spec, arch, labels, thresholds, build_options=build_options)
    state = network_state_dict(raw)
    model = build_model(spec, pretrained=False)
    load_weights(model, state, spec, build_options=build_options)
    model.eval()
    return model, spec, raw
