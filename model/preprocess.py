"""Model-side preprocessing derived from the spec: uint8 chips to network input.

The network sees ``(x / 255 - mean) / std`` per band, in float32, NCHW.  The
affine map is folded into one scale and one offset per band, computed once per
spec, so a batch costs one multiply-add.  Training uses the same function, so
a model sees the same numbers in training and in the job.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from scenetag.model.spec import ModelSpec


@lru_cache(maxsize=32)
def _scale_offset(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    m = np.asarray(mean, dtype=np.float32)
    s = np.asarray(std, dtype=np.float32)
    scale = (1.0 / (255.0 * s)).reshape(1, -1, 1, 1)
    offset = (-m / s).reshape(1, -1, 1, 1)
    return scale.astype(np.float32), offset.astype(np.float32)


def scale_offset(spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    """Per-band ``(scale, offset)`` so that ``x * scale + offset`` normalises uint8 input."""
    return _scale_offset(spec.mean, spec.std)


def normalize(batch: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Normalise a uint8 (or 0..255 float) NCHW batch into float32 network input."""
    if batch.ndim != 4 or batch.shape[1] != spec.n_bands:
        raise ValueError(
            f"expected a batch of shape (N, {spec.n_bands}, H, W), got {batch.shape}"
        )
    scale, offset = scale_offset(spec)
    out = batch.astype(np.float32, copy=True)
    out *= scale
    out += offset
    return out
