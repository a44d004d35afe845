"""The torch backend: a scenetag, plain or Lightning checkpoint as a :class:`~model.predictor.Predictor`.

It owns its device, precision and batching:

* uint8 chips go to the device as uint8 (from pinned memory on CUDA, without
  blocking) and are normalised there, with the spec's scale and offset;
* ``precision`` "bf16" or "fp16" runs the network under autocast, in
  channels-last layout on CUDA; "fp32" runs it as is;
* a batch that runs out of device memory is split in halves and retried, and
  later calls use the smaller batch, instead of failing the job.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from model.predictor import file_sha256
from model.preprocess import scale_offset
from model.spec import ModelSpec
from scenetag.errors import ModelError, ModelLoadError, OptionError, require

log = logging.getLogger(__name__)

#: Chips per call on the CPU: as fast as larger batches here, at a fraction of the memory.
CPU_BATCH = 8
#: Chips per call on CUDA before any out-of-memory split.
CUDA_BATCH = 256
PRECISIONS = ("fp32", "bf16", "fp16")


class TorchPredictor:
    """Probabilities from a torch checkpoint.

    Args:
        path: A checkpoint (ours, a plain state dict, or Lightning's).
        device: "cpu", "cuda", "cuda:N" or "auto".
        spec: Spec for a checkpoint that carries none, or to override the stored one.
        precision: "fp32", "bf16" (autocast; CPU or CUDA) or "fp16" (autocast; CUDA only).
        batch_size: Chips per forward pass; default 8 on the CPU (larger batches only
            cost memory there), 256 on CUDA.
        channels_last: Channels-last layout; default on CUDA.
    """

    def __init__(self, path: str | Path, device: str = "cpu", spec: ModelSpec | None = None,
                 precision: str = "fp32", batch_size: int | None = None,
                 channels_last: bool | None = None):
        torch = require("torch", "torch")
        from model.checkpoint import load_checkpoint
        from model.train import resolve_device

        if precision not in PRECISIONS:
            raise OptionError(f"precision {precision!r} is unknown: use one of {', '.join(PRECISIONS)}")
        self.path = str(path)
        self.device = resolve_device(device)
        on_cuda = self.device.startswith("cuda")
        if precision == "fp16" and not on_cuda:
            raise OptionError("--precision fp16 needs a CUDA device: use bf16 (or fp32) on the CPU")
        self.precision = precision
        self._dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        self.batch_size = int(batch_size or (CUDA_BATCH if on_cuda else CPU_BATCH))
        self.channels_last = on_cuda if channels_last is None else bool(channels_last)
        model, self.spec, _ = load_checkpoint(path, spec=spec)
        model = model.to(self.device).eval()
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        scale, offset = scale_offset(self.spec)
        self._scale = torch.from_numpy(scale).to(self.device)
        self._offset = torch.from_numpy(offset).to(self.device)
        self.sha256 = file_sha256(path)
        self._torch = torch
        log.info("torch model %s on %s (%s, %s, %d labels)", self.path, self.device, self.spec.arch,
                 precision, self.spec.n_labels)

    def _forward(self, x_u8):
        """Probabilities of a uint8 batch already on the device."""
        torch = self._torch
        x = x_u8.float() * self._scale + self._offset
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        device_type = "cuda" if self.device.startswith("cuda") else "cpu"
        with torch.autocast(device_type, dtype=self._dtype or torch.float32, enabled=self._dtype is not None):
            logits = self.model(x)
        return torch.sigmoid(logits.float())

    def _run(self, x_u8):
        """``_forward``, splitting the batch in halves while the device runs out of memory."""
        torch = self._torch
        try:
            return self._forward(x_u8)
        except torch.OutOfMemoryError:
            n = x_u8.shape[0]
            if n == 1:
                raise ModelError(
                    f"one chip does not fit in {self.device}'s memory with {self.spec.arch} at "
                    f"{self.spec.chip_size} px: use a smaller model or --device cpu"
                ) from None
            if self.device.startswith("cuda"):
                torch.cuda.empty_cache()
            half = n // 2
            if half < self.batch_size:
                log.warning("out of memory on %s at batch %d: continuing with batch %d", self.device, n, half)
                self.batch_size = half
            return torch.cat([self._run(x_u8[:half]), self._run(x_u8[half:])])

    def predict(self, chips: np.ndarray) -> np.ndarray:
        """uint8 ``(N, C, H, W)`` in spec band order → float32 ``(N, L)`` probabilities."""
        torch = self._torch
        chips = np.asarray(chips)
        if chips.ndim != 4 or chips.shape[1] != self.spec.n_bands:
            raise ModelLoadError(
                f"model {self.path} takes (N, {self.spec.n_bands}, H, W) chips, got shape {chips.shape}"
            )
        if len(chips) == 0:
            return np.zeros((0, self.spec.n_labels), np.float32)
        host = torch.from_numpy(np.ascontiguousarray(chips, dtype=np.uint8))
        on_cuda = self.device.startswith("cuda")
        out = []
        with torch.inference_mode():
            for start in range(0, len(host), self.batch_size):
                part = host[start:start + self.batch_size]
                if on_cuda:
                    part = part.pin_memory().to(self.device, non_blocking=True)
                out.append(self._run(part).cpu())
        return torch.cat(out).numpy().astype(np.float32, copy=False)

    def __repr__(self) -> str:
        return f"TorchPredictor({self.path!r}, device={self.device!r}, precision={self.precision!r})"
