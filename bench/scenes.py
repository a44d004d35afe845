"""What the benchmarks share: where the real data is, large scenes derived from it, the model."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

from scenetag.atomic import atomic_path

ROOT = Path(__file__).resolve().parents[1]
#: The shared real data (scenes/, chips/): ``$SCENETAG_DATA``, else ``../shared/data`` beside the project.
DATA = Path(os.environ.get("SCENETAG_DATA", ROOT.parent / "shared" / "data"))
#: Where benchmarks keep what they build once (scenes, models).
CACHE = ROOT / "bench" / "_data"


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


def bench_model(chip: int, resolution_m: float, tiny: bool = False) -> tuple[Path, str]:
    """The shipped default model, else (or with ``tiny``) the tiny test model; returns it and a description.

    The tiny model (mobilenetv3_small_050, random weights, ``chip`` px chips at
    ``resolution_m``) is exported once into :data:`CACHE`.
    """
    from model.default import DEFAULT_MODEL

    if DEFAULT_MODEL.exists() and not tiny:
        return DEFAULT_MODEL, f"{DEFAULT_MODEL} (the shipped default model)"
    from tests.model_factory import export_tiny_model, tiny_spec

    path = CACHE / f"tiny{chip}_{resolution_m:g}m.onnx"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        export_tiny_model(path, tiny_spec(chip_size=chip, resolution_m=resolution_m))
    return path, f"tiny test model (mobilenetv3_small_050, random weights, {chip} px chips, {resolution_m:g} m, 3 bands)"
