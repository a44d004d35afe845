"""Open a scene once, validate it, and describe it.

:func:`open_scene` turns GDAL's failures into :class:`~scenetag.errors.SceneError`
subclasses with messages that say what is wrong and how to fix it.
"""

from __future__ import annotations

import enum
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import RasterioError
from rasterio.windows import Window

from scenetag.model.spec import ModelSpec
from scenetag.errors import BandError, GeoreferenceError, SceneReadError
from scenetag.gdal_messages import route_gdal_messages

log = logging.getLogger(__name__)

# Wherever scenes are opened (this process, a Dask worker, a reader process): GDAL's messages once.
route_gdal_messages()

_COLOR_NAMES = {
    ColorInterp.red: "red", ColorInterp.green: "green", ColorInterp.blue: "blue",
    ColorInterp.alpha: "alpha", ColorInterp.gray: "gray",
}


class MaskMode(str, enum.Enum):
    """How a scene's validity is known, from GDAL's mask flags; it decides how a reader gets the mask."""

    #: No mask at all: every pixel is valid and no mask is read.
    ALL_VALID = "all_valid"
    #: Per-band nodata values only: the mask follows from the pixels (valid where any band differs).
    NODATA = "nodata"
    #: An alpha band, a mask band or per-dataset nodata: GDAL's dataset mask is read.
    GDAL = "gdal"


@dataclass(frozen=True)
class SceneInfo:
    """What the job needs to know about a scene, read once."""

    path: str
    scene_id: str
    width: int
    height: int
    count: int
    dtype: str
    crs: CRS
    transform: Affine
    nodata: float | None
    colorinterp: tuple[str, ...]
    block_shape: tuple[int, int]
    tiled: bool
    has_alpha: bool
    resolution_m: float
    mask_mode: MaskMode
    #: Each band's nodata value (None where a band has none).
    nodatavals: tuple[float | None, ...]
    #: What opening found doubtful (a remote scene that is not cloud-optimised).
    warnings: tuple[str, ...] = ()

    @property
    def is_uint8(self) -> bool:
        return self.dtype == "uint8"


def open_scene(path: str | Path, scene_id: str | None = None) -> SceneInfo:
    """Open ``path`` and describe it; refuse what is not a georeferenced raster.

    ``path`` is a local file or any location GDAL reads (a URL, ``s3://...``,
    ``/vsi...``), passed to rasterio as it is (:mod:`tiler.location`); messages
    show it redacted.  ``scene_id`` names the scene (default: the file's stem).
    A remote scene that is not cloud-optimised is described with a warning.
    """
    from scenetag.tiler.cloud import gdal_env
    from scenetag.tiler.location import is_remote, redact, redact_text, scene_name

    if is_remote(path):
        location, shown = str(path), redact(path)
        try:
            with gdal_env(), rasterio.open(location) as src:
                info = _describe(src, shown, location, scene_id or scene_name(location))
        except RasterioError as exc:
            from scenetag.tiler.location import is_network
            from scenetag.tiler.remote import diagnose

            if is_network(location):
                raise diagnose(location, _first_line(exc)) from None
            raise SceneReadError(f"scene {shown!r} is not a raster GDAL can read "
                                 f"({redact_text(_first_line(exc))})") from None
        return info
    p = Path(path)
    if not p.exists():
        raise SceneReadError(f"scene {str(p)!r} does not exist")
    if p.is_dir():
        raise SceneReadError(f"scene {str(p)!r} is a folder: give a raster file")
    try:
        with rasterio.open(p) as src:
            info = _describe(src, str(p), str(p.resolve()), scene_id or p.stem)
    except RasterioError as exc:
        raise SceneReadError(
            f"scene {str(p)!r} is not a raster GDAL can read ({_first_line(exc)})"
        ) from exc
    return info


def _cloud_warnings(src: rasterio.DatasetReader, shown: str) -> tuple[str, ...]:
    """Why reading a remote scene chip by chip may fetch far more than the chips: striped, or no overviews."""
    out = []
    if not src.profile.get("tiled", False):
        bh = src.block_shapes[0][0]
        out.append(f"scene {shown} is not cloud-optimised: it is stored in strips of {bh} row{'s' if bh != 1 else ''}, "
                   "so every chip read fetches whole rows of the scene; convert it with "
                   "`gdal_translate -of COG in.tif out.tif`")
    elif max(src.width, src.height) > 1024 and src.dtypes[0] != "uint8" and not src.overviews(1):
        out.append(f"scene {shown} has no overviews, so its stretch is sampled from full-resolution blocks; "
                   "a COG (`gdal_translate -of COG`) reads faster")
    for w in out:
        log.warning("%s", w)
    return tuple(out)


def _georeference_fix(src: rasterio.DatasetReader) -> str:
    """How to georeference a scene that lacks a CRS or geotransform, from what it does have."""
    if src.rpcs:
        return ("It has RPCs: orthorectify it first, e.g. "
                "`gdalwarp -rpc -t_srs EPSG:4326 in.tif out.tif`.")
    if src.gcps[0]:
        return "It has GCPs: warp it first, e.g. `gdalwarp -t_srs EPSG:4326 in.tif out.tif`."
    return "Georeference it first (e.g. `gdal_translate -a_srs ... -a_ullr ...`)."


def _describe(src: rasterio.DatasetReader, p: str, location: str, scene_id: str) -> SceneInfo:
    from scenetag.tiler.location import is_network


    if src.crs is None:
        raise GeoreferenceError(f"scene {p!r} has no CRS, so chips cannot be placed on a map. "
                                f"{_georeference_fix(src)}")
    if src.transform == Affine.identity():
        raise GeoreferenceError(f"scene {p!r} has no geotransform, so chips cannot be placed on a map. "
                                f"{_georeference_fix(src)}")
    _check_geographic_bounds(src, p)
    dtypes = set(src.dtypes)
    if len(dtypes) != 1:
        raise SceneReadError(f"scene {p!r} mixes band types {sorted(dtypes)}: convert it to one type")
    colorinterp = tuple(_COLOR_NAMES.get(ci, ci.name) for ci in src.colorinterp)
    has_alpha = any(MaskFlags.alpha in flags for flags in src.mask_flag_enums)
    return SceneInfo(
        path=location,
        scene_id=scene_id,
        width=src.width,
        height=src.height,
        count=src.count,
        dtype=src.dtypes[0],
        crs=src.crs,
        transform=src.transform,
        nodata=src.nodata,
        colorinterp=colorinterp,
        block_shape=tuple(src.block_shapes[0]),
        tiled=bool(src.profile.get("tiled", False)),
        has_alpha=has_alpha,
        resolution_m=ground_resolution_m(src.crs, src.transform, src.width, src.height),
        mask_mode=_mask_mode(src),
        nodatavals=tuple(src.nodatavals),
        warnings=_cloud_warnings(src, p) if is_network(location) else (),
    )


#: Degrees a geographic scene's edges may pass the poles or the antimeridian by (rounding in a geotransform).
_DEGREE_SLACK = 1e-6


def _check_geographic_bounds(src: rasterio.DatasetReader, p: str) -> None:
    """Refuse a geographic scene whose bounds leave the globe: latitude past ±90°, longitude past -180°..360°.

    Such bounds mean a wrong geotransform (or a projected scene labelled
    geographic); chips placed from it would be nowhere on Earth.
    """
    if not src.crs.is_geographic:
        return
    b = src.bounds
    south, north = min(b.bottom, b.top), max(b.bottom, b.top)
    west, east = min(b.left, b.right), max(b.left, b.right)
    where = []
    if south < -90 - _DEGREE_SLACK or north > 90 + _DEGREE_SLACK:
        where.append(f"latitude {south:g}..{north:g} reaches past ±90°")
    if west < -180 - _DEGREE_SLACK or east > 360 + _DEGREE_SLACK or east - west > 360 + _DEGREE_SLACK:
        where.append(f"longitude {west:g}..{east:g} reaches past -180°..180° (or 0°..360°)")
    if where:
        raise GeoreferenceError(
            f"scene {p!r} is in the geographic CRS {src.crs.to_string()} but its bounds "
            f"(left {b.left:g}, bottom {b.bottom:g}, right {b.right:g}, top {b.top:g}) leave the globe: "
            f"{'; '.join(where)}. Its geotransform is wrong, or it is projected: fix it, e.g. "
            "`gdal_edit.py -a_ullr ulx uly lrx lry` or `-a_srs` with its real CRS"
        )


def _mask_mode(src: rasterio.DatasetReader) -> MaskMode:
    """The scene's :class:`MaskMode`, from its bands' mask flags."""
    flags = src.mask_flag_enums
    if all(f == [MaskFlags.all_valid] for f in flags):
        return MaskMode.ALL_VALID
    if all(f == [MaskFlags.nodata] for f in flags) and all(v is not None for v in src.nodatavals):
        return MaskMode.NODATA
    return MaskMode.GDAL


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def ground_resolution_m(crs: CRS, transform: Affine, width: int, height: int) -> float:
    """Mean metres per pixel; for a geographic CRS, measured at the scene centre."""
    if crs.is_geographic:
        from pyproj import Geod

        geod = Geod(ellps="WGS84")
        cx, cy = transform @ (width / 2.0, height / 2.0)
        x1, y1 = transform @ (width / 2.0 + 1, height / 2.0)
        x2, y2 = transform @ (width / 2.0, height / 2.0 + 1)
        _, _, dx = geod.inv(cx, cy, x1, y1)
        _, _, dy = geod.inv(cx, cy, x2, y2)
        return float((abs(dx) + abs(dy)) / 2.0)
    factor = crs.linear_units_factor[1] if crs.linear_units_factor else 1.0
    px = math.hypot(transform.a, transform.d)
    py = math.hypot(transform.b, transform.e)
    return float((px + py) / 2.0 * factor)


@dataclass(frozen=True)
class BandChoice:
    """The scene bands fed to the model, in the model's band order, and the evidence they were chosen by."""

    bands: tuple[int, ...]
    #: How they were chosen, for people: ``"from --bands"``, the colour tags, or the band count.
    evidence: str

    def describe(self, spec: ModelSpec) -> str:
        """``"3,2,1 as red,green,blue (from --bands)"``: the run line's and ``runs.bands_used``'s text."""
        return f"{','.join(map(str, self.bands))} as {','.join(spec.bands)} ({self.evidence})"


def choose_bands(info: SceneInfo, spec: ModelSpec, bands: Sequence[int] | None) -> BandChoice:
    """1-based scene band indexes in the model's band order, and why those.

    Explicit ``bands`` win.  Otherwise bands are matched by colour
    interpretation (e.g. red, green, blue), and failing that the first
    ``n`` non-alpha bands are taken.  Colour tags are only a claim (a
    PlanetScope analytic scene tags blue, green, red, NIR as red, green,
    blue, undefined), so the evidence is said, to be checked.
    """
    n = spec.n_bands
    if bands:
        bands = tuple(int(b) for b in bands)
        if len(bands) != n:
            raise BandError(
                f"model expects {n} bands ({', '.join(spec.bands)}), --bands gives {len(bands)}: "
                f"pass {n} band indexes, e.g. --bands {','.join(str(i + 1) for i in range(n))}"
            )
        bad = [b for b in bands if not 1 <= b <= info.count]
        if bad:
            raise BandError(
                f"band index {bad[0]} is out of range: scene {info.scene_id!r} has bands 1..{info.count}"
            )
        return BandChoice(bands, "from --bands")
    by_name = {name: i + 1 for i, name in enumerate(info.colorinterp)}
    tags = ", ".join(info.colorinterp)
    if all(b in by_name for b in spec.bands):
        return BandChoice(tuple(by_name[b] for b in spec.bands), f"from the scene's colour tags: {tags}")
    usable = [i + 1 for i, name in enumerate(info.colorinterp) if name != "alpha"]
    if len(usable) < n:
        raise BandError(
            f"model expects {n} bands ({', '.join(spec.bands)}), scene {info.scene_id!r} has "
            f"{len(usable)} usable: choose bands with --bands, e.g. --bands "
            + ",".join(str(usable[i % len(usable)]) for i in range(n))
        )
    chosen = tuple(usable[:n])
    if len(usable) > n:
        log.warning(
            "scene %s has %d bands (%s) and the model expects %s: using bands %s; "
            "pass --bands to choose others", info.scene_id, info.count,
            tags, ", ".join(spec.bands), ",".join(map(str, chosen)),
        )
        return BandChoice(chosen, f"the first {n} of {len(usable)} bands: the colour tags ({tags}) "
                                  "do not name the model's bands")
    return BandChoice(chosen, f"the scene's {n} bands in file order: the colour tags ({tags}) "
                              "do not name the model's bands")


def select_bands(info: SceneInfo, spec: ModelSpec, bands: Sequence[int] | None) -> tuple[int, ...]:
    """The band indexes of :func:`choose_bands`."""
    return choose_bands(info, spec, bands).bands


def resolution_factor(info: SceneInfo, spec: ModelSpec, resample: bool) -> float:
    """Scene pixels per model pixel when resampling, else 1 (see :func:`resolution_ratio`)."""
    return resolution_ratio(info, spec) if resample else 1.0


def resolution_ratio(info: SceneInfo, spec: ModelSpec) -> float:
    """The model's metres per pixel over the scene's: under 1 for a scene coarser than the model."""
    return spec.resolution_m / info.resolution_m


#: A scene and model whose resolutions differ by more than this (either way) are warned about.
RESOLUTION_WARN_RATIO = 2.0


#: Rows per sample window at least, for files stored in strips of a few rows.
MIN_SAMPLE_ROWS = 64


def decimated_read(src: rasterio.DatasetReader, bands: Sequence[int], max_side: int = 1024,
                   max_blocks: int = 64, min_valid: int = 0) -> np.ma.MaskedArray:
    """A masked sample of the whole scene for per-scene statistics.

    With overviews (or a small scene), a read at most ``max_side`` pixels on a
    side, which GDAL serves from the overviews.  Without overviews such a read
    would decompress every block, so instead up to ``max_blocks`` whole blocks
    spread evenly over the scene are read, and returned side by side (in a
    striped file, windows of at least ``MIN_SAMPLE_ROWS`` strips).

    Where that sample holds fewer than ``min_valid`` valid pixels in some band
    (a sparse scene whose valid area the spread or the overview missed), more
    blocks are read, in a fixed order spread over the scene, until it holds
    ``min_valid`` or every block has been read: a sparse scene costs more
    reading, never a stretch computed from nothing.
    """
    scale = max(src.width, src.height) / max_side
    if scale <= 1:
        return src.read(list(bands), masked=True)
    if src.overviews(bands[0]):
        shape = (len(bands), max(1, round(src.height / scale)), max(1, round(src.width / scale)))
        sample = src.read(list(bands), out_shape=shape, masked=True)
        if _n_valid(sample) >= min_valid:
            return sample
    first, rest = _sample_windows(src, max_blocks)
    parts = [src.read(list(bands), window=w, masked=True).reshape(len(bands), 1, -1) for w in first]
    n_valid = sum(_n_valid(p) for p in parts)
    for window in rest:
        if n_valid >= min_valid:
            break
        part = src.read(list(bands), window=window, masked=True).reshape(len(bands), 1, -1)
        found = _n_valid(part)
        if found:  # past the first spread, only blocks with valid pixels are kept (memory stays small)
            parts.append(part)
            n_valid += found
    return np.ma.concatenate(parts, axis=2)


def _n_valid(sample: np.ma.MaskedArray) -> int:
    """Valid pixels of ``sample`` (bands, ...) in its sparsest band."""
    mask = np.ma.getmaskarray(sample)
    return int(min(mask[b].size - np.count_nonzero(mask[b]) for b in range(mask.shape[0])))


def _sample_windows(src: rasterio.DatasetReader, max_blocks: int) -> tuple[list[Window], Iterator[Window]]:
    """The scene's sample windows: up to ``max_blocks`` spread evenly, then every other one in a fixed spread order."""
    bh, bw = src.block_shapes[0]
    # Thin strips (striped files) would sample only a few scan lines: take at least
    # MIN_SAMPLE_ROWS rows per window (each strip decodes its full width anyway).
    bh, bw = min(max(bh, MIN_SAMPLE_ROWS), 512), min(bw, 512)
    n_rows, n_cols = max(1, math.ceil(src.height / bh)), max(1, math.ceil(src.width / bw))
    # The first spread takes whole windows (a partial last row or column only when it is all there is).
    full_rows, full_cols = max(1, src.height // bh), max(1, src.width // bw)
    per_side = max(1, int(math.sqrt(max_blocks)))
    rows = np.unique(np.linspace(0, full_rows - 1, min(per_side, full_rows)).round().astype(int))
    cols = np.unique(np.linspace(0, full_cols - 1, min(per_side, full_cols)).round().astype(int))
    first = [(int(r), int(c)) for r in rows for c in cols]

    def window(r: int, c: int) -> Window:
        return Window(c * bw, r * bh, min(bw, src.width - c * bw), min(bh, src.height - r * bh))

    def rest() -> Iterator[Window]:
        seen = set(first)
        # A fixed permutation: the same scene always gives the same sample.
        for k in np.random.default_rng(0).permutation(n_rows * n_cols):
            rc = (int(k // n_cols), int(k % n_cols))
            if rc not in seen:
                yield window(*rc)

    return [window(r, c) for r, c in first], rest()
