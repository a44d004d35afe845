"""The torch backend: a scenetag, plain or Lightning checkpoint as a :class:`~model.predictor.Predictor`."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from model.predictor import file_sha256
from model.spec import ModelSpec
from scenetag.errors import ModelLoadError, require

log = logging.getLogger(__name__)


#: Chips per call on the CPU: as fast as larger batches here, at a fraction of the memory.
CPU_BATCH = 8


class TorchPredictor:
    """Probabilities from a torch checkpoint.

    Args:
        path: A checkpoint (ours, a plain state dict, or Lightning's).
        device: "cpu", "cuda", "cuda:N" or "auto".
        spec: Spec for a checkpoint that carries none, or to override the stored one.
        amp: bf16 autocast on CUDA (ignored on the CPU).
        batch_size: Chips per forward pass; default 8 on the CPU (larger batches only
            cost memory there), 64 on CUDA.
    """

    def __init__(self, path: str | Path, device: str = "cpu", spec: ModelSpec | None = None,
                 amp: bool = False, batch_size: int | None = None):
        torch = require("torch", "torch")
        from model.checkpoint import load_checkpoint
        from model.train import resolve_device

        self.path = str(path)
        self.device = resolve_device(device)
        self.amp = bool(amp) and self.device.startswith("cuda")
        self.batch_size = int(batch_size or (64 if self.device.startswith("cuda") else CPU_BATCH))
        model, self.spec, _ = load_checkpoint(path, spec=spec)
        self.model = model.to(self.device).eval()
        self.sha256 = file_sha256(path)
        self._torch = torch
        log.info("torch model %s on %s (%s, %d labels)", self.path, self.device, self.spec.arch, self.spec.n_labels)

    def predict(self, chips: np.ndarray) -> np.ndarray:
        """uint8 ``(N, C, H, W)`` in spec band order → float32 ``(N, L)`` probabilities."""
        from model.train import predict_logits, sigmoid

        chips = np.asarray(chips)
        if chips.ndim != 4 or chips.shape[1] != self.spec.n_bands:
            raise ModelLoadError(
                f"model {self.path} takes (N, {self.spec.n_bands}, H, W) chips, got shape {chips.shape}"
            )
        logits = predict_logits(self.model, chips, self.spec, self.device, self.batch_size, amp=self.amp)
        return sigmoid(logits)

    def __repr__(self) -> str:
        return f"TorchPredictor({self.path!r}, device={self.device!r})"
