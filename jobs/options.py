"""Options of a scene job, frozen and serialisable (they go into provenance)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from scenetag.config import DEFAULT_MAX_CHIPS, DEFAULT_RESAMPLE_MAX_FACTOR
from scenetag.errors import OptionError
from scenetag.tiler.feed import ReaderMode
from scenetag.tiler.grid import EdgePolicy

#: Reader threads by default.
DEFAULT_THREADS = 2


def check_to_crs(to_crs: str | None) -> None:
    """Refuse a ``--to-crs`` that GDAL does not know, saying PROJ's reason (its own message is not logged)."""
    if not to_crs:
        return
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    from scenetag.gdal_messages import gdal_errors_raised

    try:
        with gdal_errors_raised():
            CRS.from_user_input(to_crs)
    except CRSError as exc:
        why = str(exc).split("PROJ: ", 1)[-1] if "PROJ: " in str(exc) else str(exc)
        raise OptionError(f"--to-crs {to_crs!r} is not a CRS GDAL knows ({why}): use e.g. EPSG:4326") from None


@dataclass(frozen=True)
class RunOptions:
    """How a scene is cut and classified.

    Attributes:
        bands: 1-based scene bands in model order; None picks them from the scene.
        stride: Chip stride in model pixels; None means the chip size (no overlap).
        edge: Edge policy for partial chips.
        min_valid: Chips with a smaller valid fraction are skipped.
        resample: Read chips at the model's ground resolution.
        batch_size: Chips per model call; None takes the backend's own (8 on the CPU).
        readers: Reader threads or processes; None: 2 threads, or one process per core
            less one.
        reader: "threads" (one chip per read, for CPU models), "processes" (runs of chips
            read by processes into shared memory, to feed a GPU) or "auto" (processes when
            the model runs on a GPU).
        to_crs: Write vectors in this CRS (e.g. "EPSG:4326"); None keeps the scene's.
        raster: Also write a probability GeoTIFF (COG) beside the GeoPackage.
        max_chips: Refuse a scene whose grid has more chips than this (before reading a
            pixel); it bounds the run, not its result.
        resample_max_factor: With ``resample``, refuse a scene more than this many times
            coarser than the model (its chips multiply by the factor squared) unless raised
            to the scene's factor; it bounds the run, not its result.
        asset: The asset of a STAC item to read (None: the one whose bands match the model's).
            Not among the options that make the signature: the scene's identity holds the asset.
        config: Provenance only: the config file that gave the command defaults
            (:func:`scenetag.config_file.provenance`), recorded in the ``runs`` table's
            ``config``; not an option of the job (not in :meth:`to_dict`, nor in the signature).
    """

    bands: tuple[int, ...] | None = None
    stride: int | None = None
    edge: EdgePolicy = EdgePolicy.SHIFT
    min_valid: float = 0.5
    resample: bool = False
    batch_size: int | None = None
    readers: int | None = None
    reader: ReaderMode = ReaderMode.AUTO
    to_crs: str | None = None
    raster: bool = False
    max_chips: int = DEFAULT_MAX_CHIPS
    resample_max_factor: float = DEFAULT_RESAMPLE_MAX_FACTOR
    asset: str | None = None
    config: Mapping[str, Any] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "edge", EdgePolicy(self.edge))
        except ValueError:
            raise OptionError(f"edge policy {self.edge!r} is unknown: use shift, pad or skip") from None
        if self.bands is not None:
            object.__setattr__(self, "bands", tuple(int(b) for b in self.bands))
        if not 0.0 <= self.min_valid <= 1.0:
            raise OptionError(f"min_valid must be in [0, 1], got {self.min_valid}")
        try:
            object.__setattr__(self, "reader", ReaderMode(self.reader))
        except ValueError:
            raise OptionError(f"reader {self.reader!r} is unknown: use one of "
                              f"{', '.join(m.value for m in ReaderMode)}") from None
        if (self.batch_size is not None and self.batch_size < 1) or (self.readers is not None and self.readers < 1):
            raise OptionError(f"batch_size and readers must be >= 1, got {self.batch_size} and {self.readers}")
        if self.stride is not None and self.stride < 1:
            raise OptionError(f"stride must be >= 1, got {self.stride}")
        if isinstance(self.max_chips, bool) or not isinstance(self.max_chips, int) or self.max_chips < 1:
            raise OptionError(f"max_chips must be a whole number >= 1, got {self.max_chips!r}")
        if isinstance(self.resample_max_factor, bool) or not isinstance(self.resample_max_factor, (int, float)) \
                or not self.resample_max_factor >= 1:
            raise OptionError(f"resample_max_factor must be a number >= 1, got {self.resample_max_factor!r}")
        object.__setattr__(self, "resample_max_factor", float(self.resample_max_factor))

    @classmethod
    def for_model(cls, chip_size: int, *, stride: int | None = None, overlap: float | None = None,
                  **values: object) -> "RunOptions":
        """Options for a model of ``chip_size``: ``overlap`` (a fraction) becomes a stride, the CRS is checked.

        Raises :class:`~scenetag.errors.OptionError` for contradicting or unknown values.
        """
        from scenetag.tiler.grid import stride_from_overlap

        if stride is not None and overlap is not None:
            raise OptionError(f"give a stride ({stride}) or an overlap ({overlap}), not both")
        if overlap is not None:
            if not 0 <= overlap < 1:
                raise OptionError(f"overlap must be a fraction in [0, 1), got {overlap}")
            stride = stride_from_overlap(chip_size, overlap)
        check_to_crs(values.get("to_crs"))  # type: ignore[arg-type]
        return cls(stride=stride, **values)  # type: ignore[arg-type]

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("config")
        d["edge"] = self.edge.value
        d["reader"] = self.reader.value
        d["bands"] = list(self.bands) if self.bands else None
        return d

    def result_affecting(self) -> dict:
        """Options that change the output (not batch size, readers or the limits)."""
        d = self.to_dict()
        d.pop("resample_max_factor")
        d.pop("batch_size")
        d.pop("readers")
        d.pop("reader")
        d.pop("max_chips")
        d.pop("asset")
        return d
