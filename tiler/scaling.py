"""Bring scene values into the model's 0..255 input domain, as the spec says.

uint8 passes through.  Other types use a per-scene linear stretch, computed
once per scene (never per chip): between percentiles of a decimated masked
read (GDAL uses overviews where there are some), or a fixed range.

The percentiles are taken of valid pixels only, and the sample is read until
it holds :data:`MIN_VALID_SAMPLE` of them (or the whole scene has been read),
so a sparse scene is stretched by what it shows, never by a guess.  A scene
with too few valid pixels to estimate a stretch is a :class:`SceneError`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

import numpy as np
import rasterio

from scenetag.errors import SceneError
from scenetag.model.spec import ModelSpec
from scenetag.tiler.location import redact
from scenetag.tiler.scene import SceneInfo, decimated_read

log = logging.getLogger(__name__)


#: Values per band the percentiles are taken from, at most.
MAX_SAMPLE = 1_000_000
#: Valid values per band the sample is read until it holds (or the scene has no more).
MIN_VALID_SAMPLE = 65_536
#: Fewer valid values per band than this in the whole scene, and no stretch can be estimated.
MIN_STRETCH_VALUES = 64


@dataclass(frozen=True)
class Stretch:
    """Per-band linear map ``low -> 0``, ``high -> 255``."""

    low: tuple[float, ...]
    high: tuple[float, ...]
    #: False for a scene without one valid pixel: there is nothing to stretch, and
    #: :meth:`apply` refuses rather than map pixels by a made-up range.
    estimated: bool = True
    #: What the stretch found doubtful about the scene (recorded in ``runs.warnings``).
    warnings: tuple[str, ...] = ()

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
        if not self.estimated:
            raise SceneError("the scene's stretch was not estimated (the sample found no valid pixel), "
                             "yet a chip with valid pixels is being read: pass a spec with scaling 'fixed'")
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
    from scenetag.tiler.cloud import gdal_env

    with gdal_env(), rasterio.open(info.path) as src:
        sample = decimated_read(src, bands, min_valid=MIN_VALID_SAMPLE)
    p_lo, p_hi = spec.percentiles
    counts = [int(sample[b].count()) for b in range(sample.shape[0])]
    if max(counts) == 0:
        # Nothing valid anywhere (the whole scene was read): no chip will be classified,
        # and the scene is reported empty with its reason.
        log.info("scene %s has no valid pixel: no stretch", info.scene_id)
        return Stretch((0.0,) * len(bands), (1.0,) * len(bands), estimated=False)
    if min(counts) < MIN_STRETCH_VALUES:
        b = counts.index(min(counts))
        raise SceneError(
            f"scene {redact(info.path)!r} has only {counts[b]} valid pixels in band {bands[b]} (the whole scene "
            f"was read), too few to estimate its p{p_lo:g}..p{p_hi:g} stretch (at least "
            f"{MIN_STRETCH_VALUES} needed): check its nodata/mask, or pass a spec with scaling 'fixed' "
            "and a fixed_range"
        )
    lows, highs, flat = [], [], []
    for b in range(sample.shape[0]):
        values = sample[b].compressed()
        if values.size > MAX_SAMPLE:  # a regular subsample keeps percentiles cheap
            values = values[:: values.size // MAX_SAMPLE + 1]
        lo, hi = np.percentile(values, [p_lo, p_hi])
        if hi <= lo:  # nothing to stretch between: the band is flat (where it is valid)
            flat.append((bands[b], float(lo)))
            hi = lo + 1.0
        lows.append(float(lo))
        highs.append(float(hi))
    warnings = ()
    if flat:
        warnings = (
            f"no contrast: {'every band' if len(flat) == len(bands) else 'band ' + ', '.join(str(b) for b, _ in flat)}"
            f" of the scene has one value between its p{p_lo:g} and p{p_hi:g} "
            f"({', '.join(f'band {b}: {v:g}' for b, v in flat)}), so its chips are flat and their tags "
            "describe no content: check the scene (a fill value not declared as nodata?)",
        )
        log.warning("scene %s: %s", info.scene_id, warnings[0])
    stretch = Stretch(tuple(lows), tuple(highs), warnings=warnings)
    log.info("scene %s stretch p%g..p%g from %d valid values: low=%s high=%s", info.scene_id, p_lo, p_hi,
             min(counts), [round(v, 1) for v in lows], [round(v, 1) for v in highs])
    return stretch
