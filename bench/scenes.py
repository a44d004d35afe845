"""Large benchmark scenes derived from real ones, shared by the benchmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

from scenetag.atomic import atomic_path


def repeat_scene(src_path: Path, dst_path: Path, repeat: int, shift: int = 0, compress: str = "deflate",
                 **creation: str) -> Path:
    """Write ``src`` repeated ``repeat`` x ``repeat`` times, tiled 256, atomically.

    The copies tile the plane; ``shift`` moves the origin east by that many
    whole repeated scenes, so derived scenes do not overlap.  Band colour
    interpretation (e.g. an alpha band) is kept.  Written one row of copies at
    a time, so memory stays at one row.  ``creation`` adds GDAL creation
    options (e.g. ``NUM_THREADS="ALL_CPUS"`` to compress on every core).
    """
    with rasterio.open(src_path) as src:
        tile = src.read()
        profile = src.profile.copy()
        colorinterp = src.colorinterp
        t = src.transform
    _, th, tw = tile.shape
    origin = Affine(t.a, t.b, t.c + shift * t.a * tw * repeat, t.d, t.e, t.f)
    profile.update(width=tw * repeat, height=th * repeat, transform=origin, tiled=True,
                   blockxsize=256, blockysize=256, compress=compress, BIGTIFF="IF_SAFER", **creation)
    row = np.tile(tile, (1, 1, repeat))
    with atomic_path(dst_path) as tmp:
        with rasterio.open(tmp, "w", **profile) as dst:
            for r in range(repeat):
                dst.write(row, window=Window(0, r * th, tw * repeat, th))
            dst.colorinterp = colorinterp
    return dst_path
