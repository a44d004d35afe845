"""Bring scene values into the model's 0..255 input domain, as the spec says.

uint8 passes through.  Other types use a per-scene linear stretch, computed
once per scene (never per chip): between percentiles of a decimated masked
read (GDAL uses overviews where there are some), or a fixed range.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

import numpy as np
import rasterio

from scenetag.model.spec import ModelSpec
from scenetag.tiler.scene import SceneInfo, decimated_read

log = logging.getLogger(__name__)


#: Values per band the percentiles are taken from, at most.
MAX_SAMPLE = 1_000_000


@dataclass(frozen=True)
class Stretch:
    """Per-band linear map ``low -> 0``, ``high -> 255``."""

    low: tuple[float, ...]
    high: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.low) != len(self.high):
            raise ValueError("low and high need one value per band")

    @cached_property
    def _lo_scale(self) -> tuple[np.ndarray, np.ndarray]:
        lo = np.asarray(self.low, dtype=np.float32).reshape(-1, 1, 1)
        hi = np.asarray(self.high, dtype=np.float32).reshape(-1, 1, 1)
        return lo, (255.0 / np.maximum(hi - lo, 1e-12)).astype(np.float32)

    def apply(self, data: np.ndarray) -> np.ndarray:
        """``(C, H, W)`` values to uint8."""
        lo, scale = self._lo_scale
        out = (data.astype(np.float32) - lo) * scale
        np.clip(out, 0, 255, out=out)
        return (out + 0.5).astype(np.uint8)


def scene_stretch(info: SceneInfo, bands: Sequence[int], spec: ModelSpec) -> Stretch | None:
    """The scene's stretch, or None when it is uint8 and passes through."""
    if info.is_uint8:
        return None
    if spec.scaling == "fixed":
        lo, hi = spec.fixed_range  # type: ignore[misc]
        return Stretch((float(lo),) * len(bands), (float(hi),) * len(bands))
    with rasterio.open(info.path) as src:
        sample = decimated_read(src, bands)
    p_lo, p_hi = spec.percentiles
    lows, highs = [], []
    for b in range(sample.shape[0]):
        values = sample[b].compressed()
        if values.size > MAX_SAMPLE:  # a regular subsample keeps percentiles cheap
            values = values[:: values.size // MAX_SAMPLE + 1]
        if values.size == 0:
            lows.append(0.0)
            highs.append(1.0)
            continue
        lo, hi = np.percentile(values, [p_lo, p_hi])
        if hi <= lo:
            hi = lo + 1.0
        lows.append(float(lo))
        highs.append(float(hi))
    stretch = Stretch(tuple(lows), tuple(highs))
    log.info("scene %s stretch p%g..p%g: low=%s high=%s", info.scene_id, p_lo, p_hi,
             [round(v, 1) for v in lows], [round(v, 1) for v in highs])
    return stretch
