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
    with atomic_path(dst_path, replace=True) as tmp:  # a cache of deterministic content
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
    from scenetag.model.default import DEFAULT_MODEL

    if DEFAULT_MODEL.exists() and not tiny:
        return DEFAULT_MODEL, f"{DEFAULT_MODEL} (the shipped default model)"
    from tests.model_fixtures import export_tiny_model, tiny_spec

    path = CACHE / f"tiny{chip}_{resolution_m:g}m.onnx"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        export_tiny_model(path, tiny_spec(chip_size=chip, resolution_m=resolution_m))
    return path, f"tiny test model (mobilenetv3_small_050, random weights, {chip} px chips, {resolution_m:g} m, 3 bands)"


def load_chips(folder: Path, limit: int) -> np.ndarray:
    """uint8 ``(N, 3, 256, 256)`` RGB from the first ``limit`` JPEG chips in ``folder``."""
    from scenetag.model.training.data import load_images

    names = sorted(p.name for p in folder.glob("*.jpg"))[:limit]
    if not names:
        raise SystemExit(f"no .jpg chips in {folder}")
    return load_images(folder, names, 256)


def build_scene(chips: np.ndarray, work: Path, repeat: int) -> Path:
    """The real-derived GPU benchmark scene, built once into ``work``.

    ``chips`` laid edge to edge as a square mosaic, repeated ``repeat`` x
    ``repeat`` times: tiled 256, DEFLATE level 1 (compressed on every core;
    decoding costs the same at any level), nodata 0, 3 m, EPSG:32721.
    """
    side = int(np.sqrt(len(chips)))
    dst_path = work / f"scene_{side}x{side}chips_{repeat}x.tif"
    if dst_path.exists():
        return dst_path
    c = chips[:side * side]
    size = c.shape[-1]
    block = c.reshape(side, side, 3, size, size).transpose(2, 0, 3, 1, 4).reshape(3, side * size, side * size)
    block = np.where(block == 0, 1, block)  # keep 0 for nodata only
    work.mkdir(parents=True, exist_ok=True)
    src = work / "mosaic.tif"
    profile = dict(driver="GTiff", width=block.shape[2], height=block.shape[1], count=3, dtype="uint8",
                   crs="EPSG:32721", transform=Affine(3.0, 0, 500000.0, 0, -3.0, 9000000.0), nodata=0)
    try:
        with rasterio.open(src, "w", **profile) as dst:
            dst.write(block)
        repeat_scene(src, dst_path, repeat, NUM_THREADS="ALL_CPUS", ZLEVEL="1")
    finally:
        src.unlink(missing_ok=True)
    return dst_path
