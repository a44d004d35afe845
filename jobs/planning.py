"""Planning a scene: open and validate it against the model and options, choose bands,
lay the chip grid and compute the stretch (:func:`plan_scene`), before any chip is read.

The :class:`ScenePlan` it makes is what every later step of the scene job
(:mod:`jobs.scene_job`) and a dry run (:mod:`jobs.dry_run`) work from.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from scenetag.errors import ChipLimitError, OptionError, SceneReadError
from scenetag.jobs.options import RunOptions
from scenetag.jobs.sources import SceneSource
from scenetag.model.spec import ModelSpec
from scenetag.tiler.cloud import gdal_env
from scenetag.tiler.grid import Grid, chip_grid
from scenetag.tiler.location import is_remote, redact, redact_text
from scenetag.tiler.reader import ChipReader
from scenetag.tiler.scaling import Stretch, scene_stretch
from scenetag.tiler.scene import RESOLUTION_WARN_RATIO, SceneInfo, choose_bands, open_scene, resolution_ratio

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScenePlan:
    """Everything decided about a scene before any chip is read."""

    info: SceneInfo
    spec: ModelSpec
    options: RunOptions
    bands: tuple[int, ...]
    factor: float
    grid: Grid
    stretch: Stretch | None
    #: Why these bands (:class:`~tiler.scene.BandChoice`): ``from --bands``, the colour tags, the band count.
    band_evidence: str = ""
    #: What planning noticed for people: a resolution mismatch and what ``--resample`` costs, a scene
    #: smaller than one chip (logged, and shown by a dry run).
    notes: tuple[str, ...] = ()

    @property
    def bands_used(self) -> str:
        """The bands and their evidence, e.g. ``"3,2,1 as red,green,blue (from --bands)"`` (``runs.bands_used``)."""
        return (f"{','.join(map(str, self.bands))} as {','.join(self.spec.bands)}"
                + (f" ({self.band_evidence})" if self.band_evidence else ""))

    @property
    def smaller_than_chip(self) -> bool:
        """Whether the scene is narrower or lower than one chip (in scene pixels, after resampling)."""
        return self.info.width < self.grid.chip or self.info.height < self.grid.chip

    @property
    def chip_text(self) -> str:
        """One chip as people read it: ``"one 256-pixel chip"``, with the resampling when there is one."""
        text = f"one {self.grid.chip:,}-pixel chip"
        if self.factor != 1.0:
            text += (f" ({self.spec.chip_size} model pixels at {self.spec.resolution_m:g} m/pixel, "
                     "as --resample reads it)")
        return text

    @property
    def warnings(self) -> tuple[str, ...]:
        """What planning found doubtful about the scene (recorded in ``runs.warnings``)."""
        return self.info.warnings + (self.stretch.warnings if self.stretch is not None else ())

    def reader(self) -> ChipReader:
        """A reader for this plan's cells."""
        return ChipReader(self.info, self.bands, self.spec.chip_size, self.factor,
                          self.stretch, self.options.min_valid)


@contextlib.contextmanager
def scene_reads(scene: str | Path, step: str) -> Iterator[None]:
    """Turn any GDAL error raised while ``step`` reads ``scene`` into a one-line :class:`SceneReadError`.

    A truncated or corrupt file opens, and fails only when a block is read,
    anywhere: the stretch sample, the mask, a chip.  Whichever step meets it,
    the scene is unreadable, which is a per-scene failure (:mod:`jobs.failures`).
    """
    from rasterio.errors import RasterioError

    try:
        yield
    except RasterioError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        cause = exc.__cause__ or exc.__context__
        # rasterio's own text says only "see previous exception": GDAL's cause names the block
        detail = redact_text(str(cause).splitlines()[0] if cause is not None and str(cause) else first)
        if is_remote(scene):
            from scenetag.tiler.location import is_network
            from scenetag.tiler.remote import diagnose

            if is_network(str(scene)):
                raise diagnose(str(scene), detail) from None
        raise SceneReadError(f"scene {redact(scene)!r} could not be read ({step}): {detail} "
                             "(is the file truncated or corrupt?)") from exc


def plan_scene(scene_path: str | Path | SceneSource, spec: ModelSpec, options: RunOptions) -> ScenePlan:
    """Validate the scene against the model and options and lay the grid.

    ``scene_path`` is a location, or a :class:`~jobs.sources.SceneSource` (a
    STAC item's asset, with its name and the bands its metadata gives).
    Raises :class:`SceneReadError` for any GDAL error on the way (:func:`scene_reads`).
    """
    source = scene_path if isinstance(scene_path, SceneSource) else None
    location = source.location if source is not None else scene_path
    with scene_reads(location, "planning"), gdal_env():
        return _plan_scene(location, spec, options, source)


def _plan_scene(scene_path: str | Path, spec: ModelSpec, options: RunOptions,
                source: SceneSource | None = None) -> ScenePlan:
    info = open_scene(scene_path, source.name if source is not None else None)
    choice = choose_bands(info, spec, options.bands or (source.bands if source is not None else None))
    ratio = resolution_ratio(info, spec)
    factor = ratio if options.resample else 1.0
    stride = options.stride if options.stride is not None else spec.chip_size
    if stride > spec.chip_size:
        raise OptionError(
            f"stride {stride} is larger than the chip size {spec.chip_size}: use a stride "
            "of at most the chip size (or --overlap)"
        )
    grid = _grid(info, spec, options, stride, factor)
    notes = [n for n in (_resolution_note(info, spec, options, stride, ratio, grid),) if n]
    check_chip_count(info, grid, stride, options.max_chips)
    stretch = scene_stretch(info, choice.bands, spec)
    plan = ScenePlan(info, spec, options, choice.bands, factor, grid, stretch, choice.evidence, tuple(notes))
    if plan.smaller_than_chip:
        note = (f"the scene is {info.width}x{info.height} pixels, smaller than {plan.chip_text}: "
                + ("no chip fits, and the edge policy is skip" if not len(grid) else
                   "it is read as one chip padded with invalid pixels" if len(grid) == 1 else
                   "its chips are padded with invalid pixels"))
        log.info("%s: %s", info.scene_id, note)
        plan = dataclasses.replace(plan, notes=plan.notes + (note,))
    return plan


def _grid(info: SceneInfo, spec: ModelSpec, options: RunOptions, stride: int, factor: float) -> Grid:
    """The chip grid in scene pixels: the model's chip and ``stride`` scaled by ``factor`` (lazy, so cheap)."""
    src_chip = max(1, round(spec.chip_size * factor))
    src_stride = max(1, round(stride * factor))
    return chip_grid(info.width, info.height, src_chip, src_stride, options.edge)


def _resolution_note(info: SceneInfo, spec: ModelSpec, options: RunOptions, stride: int, ratio: float,
                     grid: Grid) -> str:
    """What a resolution mismatch over :data:`RESOLUTION_WARN_RATIO` means, with what ``--resample`` costs.

    Logged as a warning without ``--resample``.  With it, a scene coarser than
    the model by more than ``options.resample_max_factor`` is refused
    (:class:`ChipLimitError`): each scene pixel would become that factor squared
    in work, so the factor has to be asked for.
    """
    mismatch = max(ratio, 1 / ratio)
    if mismatch <= RESOLUTION_WARN_RATIO:
        return ""
    coarser = 1 / ratio
    # Rounded up, so that the factor shown is one that --resample-max-factor accepts.
    needed = f"{math.ceil(coarser * 10 - 1e-6) / 10:g}"
    head = (f"{info.resolution_m:.3g} m scene for a {spec.resolution_m:.3g} m model "
            f"({math.ceil(mismatch * 10 - 1e-6) / 10:g}x {'coarser' if ratio < 1 else 'finer'})")
    if not options.resample:
        other = _grid(info, spec, options, stride, ratio)
        note = (f"{head}: tags may be unreliable; --resample would classify {len(other):,} "
                f"chip{'s' if len(other) != 1 else ''} instead of {len(grid):,}")
        if coarser > options.resample_max_factor:
            note += f" (and needs --resample-max-factor {needed} to confirm)"
        log.warning("%s: %s", info.scene_id, note)
        return note
    if coarser > options.resample_max_factor:
        plain = _grid(info, spec, options, stride, 1.0)
        raise ChipLimitError(
            f"scene {info.scene_id!r}: {head}: --resample would classify {len(grid):,} chips instead of "
            f"{len(plain):,}, and past {options.resample_max_factor:g}x that is asked for: pass "
            f"--resample-max-factor {needed} to confirm, or leave out --resample")
    note = f"{head}: chips read at the model's resolution (--resample), {grid.chip:,} scene pixels per chip"
    log.info("%s: %s", info.scene_id, note)
    return note


def check_chip_count(info: SceneInfo, grid: Grid, stride: int, max_chips: int) -> None:
    """Log how many chips the scene will classify; refuse it when that is more than ``max_chips``.

    Decided from the grid's shape alone, before a pixel is read or anything written.
    """
    n = len(grid)
    rows, cols = grid.shape
    log.info("%s: %s chips to classify (%d x %d, stride %d, chip %d px)%s", info.scene_id, f"{n:,}", rows, cols,
             stride, grid.chip, f", {grid.n_skipped:,} skipped at the edge" if grid.n_skipped else "")
    if n > max_chips:
        raise ChipLimitError(
            f"stride {stride} on a {info.width}x{info.height} scene would classify {n:,} chips, more than "
            f"the limit of {max_chips:,}: pass --max-chips {n} to allow more (or use a larger stride)")
