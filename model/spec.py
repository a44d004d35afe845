"""The frozen model spec that travels with every model.

A :class:`ModelSpec` says everything the job needs to feed a model and read its
answer: label names, per-class thresholds, which bands in which order, how to
scale non-8-bit scenes, mean/std, chip size and ground resolution.  It is stored
as JSON in the ONNX file's ``metadata_props`` (key :data:`METADATA_KEY`) and
beside a torch checkpoint.  Preprocessing and thresholding read it; nothing
else repeats it.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from scenetag.errors import ModelSpecError
from scenetag.model.structure import LabelStructure
from scenetag.model.tta import TTA_MODES

if TYPE_CHECKING:
    import numpy as np

#: Key of the spec in the ONNX ``metadata_props``.
METADATA_KEY = "scenetag.spec"
SPEC_VERSION = 2  # 2: structure (exclusive groups, suppression rules) and tta
#: Key of ``extra`` under which ``scenetag quantize`` records an INT8 model's comparison with its source.
QUANTIZATION_KEY = "quantization"

#: The 17 labels of Planet's "Understanding the Amazon from Space", sorted.
PLANET_LABELS: tuple[str, ...] = (
    "agriculture", "artisinal_mine", "bare_ground", "blooming", "blow_down",
    "clear", "cloudy", "conventional_mine", "cultivation", "habitation", "haze",
    "partly_cloudy", "primary", "road", "selective_logging", "slash_burn", "water",
)

#: ImageNet normalisation, in [0, 1] units.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

SCALINGS = ("percentile", "fixed")

#: Longest column or layer name stem made from a label (outputs_schema adds the prefixes).
MAX_NAME = 48


def tag_name(label: str) -> str:
    """``label`` as it appears in the space-separated ``tags`` field: whitespace becomes ``_``."""
    return re.sub(r"\s+", "_", str(label).strip())


def column_stem(label: str, max_len: int = MAX_NAME) -> str:
    """``label`` as an SQL-safe name: lower case ASCII letters, digits and ``_``, never starting with a digit.

    Non-ASCII letters are transliterated where possible; anything else becomes
    ``_``.  Two labels may give one stem: :class:`ModelSpec` refuses those.
    """
    text = unicodedata.normalize("NFKD", str(label)).encode("ascii", "ignore").decode()
    name = re.sub(r"[^0-9a-zA-Z_]+", "_", text).strip("_").lower() or "label"
    if name[0].isdigit():
        name = "l_" + name
    return name[:max_len]


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to feed a model and read its outputs.

    Attributes:
        name: Human name of the model.
        arch: timm architecture name (informational for ONNX models).
        labels: Output label names, in output order.
        thresholds: One threshold per label, each in (0, 1).
        bands: Names of the input bands in model order, e.g. ("red", "green", "blue").
        scaling: How non-uint8 scenes are brought to 0..255: "percentile"
            (per-scene stretch between ``percentiles``) or "fixed" (linear
            between ``fixed_range``).  uint8 scenes pass through.
        percentiles: Low and high percentiles of the per-scene stretch.
        fixed_range: Input values mapped to 0 and 255 when scaling is "fixed".
        mean: Per-band mean in [0, 1] units, subtracted after dividing by 255.
        std: Per-band standard deviation in [0, 1] units.
        chip_size: Chip side in pixels.
        resolution_m: Ground resolution the model was trained at, metres/pixel.
        structure: Exclusive label groups and suppression rules applied to the tags
            (:class:`~scenetag.model.structure.LabelStructure`; JSON
            ``{"exclusive": {group: [labels]}, "suppresses": {label: [labels]}}``).
        tta: Test-time augmentation the thresholds were calibrated with, and the one
            ``run`` uses by default: "none", "flips" (2 views) or "d4" (8 views).
    """

    name: str
    arch: str
    labels: tuple[str, ...]
    thresholds: tuple[float, ...]
    bands: tuple[str, ...] = ("red", "green", "blue")
    scaling: str = "percentile"
    percentiles: tuple[float, float] = (2.0, 98.0)
    fixed_range: tuple[float, float] | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    chip_size: int = 256
    resolution_m: float = 3.0
    structure: LabelStructure = field(default_factory=LabelStructure)
    tta: str = "none"
    extra: Mapping[str, Any] = field(default_factory=dict)
    spec_version: int = SPEC_VERSION

    @property
    def quantized(self) -> bool:
        """Whether the model is an INT8 copy made by ``scenetag quantize`` (its comparison is in ``extra``)."""
        return QUANTIZATION_KEY in self.extra

    def __post_init__(self) -> None:
        # Normalise sequences to tuples so equal specs compare and hash equal.
        for name in ("labels", "thresholds", "bands", "percentiles", "mean", "std"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.fixed_range is not None:
            object.__setattr__(self, "fixed_range", tuple(self.fixed_range))
        object.__setattr__(self, "thresholds", tuple(float(t) for t in self.thresholds))
        if not isinstance(self.structure, LabelStructure):
            object.__setattr__(self, "structure", LabelStructure.from_dict(self.structure))
        if (self.structure or self.tta != "none") and self.spec_version < 2:
            object.__setattr__(self, "spec_version", 2)  # what a version-1 reader cannot apply
        self._validate()

    def _validate(self) -> None:
        if not self.labels:
            raise ModelSpecError("model spec has no labels: give at least one label name")
        bad = [lab for lab in self.labels if not isinstance(lab, str) or not lab.strip()]
        if bad:
            raise ModelSpecError(f"model spec has empty or non-string labels: {bad!r}")
        dupes = sorted({lab for lab in self.labels if self.labels.count(lab) > 1})
        if dupes:
            raise ModelSpecError(f"model spec labels are not unique: {dupes}")
        for kind, name_of in (("tag", tag_name), ("column name", column_stem)):
            seen: dict[str, str] = {}
            for lab in self.labels:
                name = name_of(lab)
                if name in seen:
                    # Two labels written as one would be indistinguishable in the outputs.
                    raise ModelSpecError(
                        f"model spec labels {seen[name]!r} and {lab!r} both become the {kind} {name!r} "
                        "in the outputs: rename one of them (labels must stay distinct once spaces become "
                        "'_' and names are lower-case ASCII)"
                    )
                seen[name] = lab
        if len(self.thresholds) != len(self.labels):
            raise ModelSpecError(
                f"model spec has {len(self.thresholds)} thresholds for "
                f"{len(self.labels)} labels: give one threshold, or one per label"
            )
        for lab, thr in zip(self.labels, self.thresholds):
            if not (0.0 < thr < 1.0) or math.isnan(thr):
                raise ModelSpecError(
                    f"threshold for {lab!r} is {thr}: thresholds must lie in (0, 1)"
                )
        if not self.bands:
            raise ModelSpecError("model spec has no bands")
        for name in ("mean", "std"):
            if len(getattr(self, name)) != len(self.bands):
                raise ModelSpecError(
                    f"model spec {name} has {len(getattr(self, name))} values for "
                    f"{len(self.bands)} bands"
                )
        for name in ("mean", "std"):
            values = getattr(self, name)
            if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
                # NaN would pass every comparison below and turn every chip into NaN.
                raise ModelSpecError(f"model spec {name} {values} has a value that is not a finite number: "
                                     f"give {len(self.bands)} finite values in [0, 1] units")
        if any(s <= 0 for s in self.std):
            raise ModelSpecError(f"model spec std must be positive, got {self.std}")
        if self.scaling not in SCALINGS:
            raise ModelSpecError(
                f"model spec scaling {self.scaling!r} is unknown: use one of {SCALINGS}"
            )
        lo, hi = self.percentiles
        if not (0 <= lo < hi <= 100):
            raise ModelSpecError(f"model spec percentiles {self.percentiles} must satisfy 0 <= low < high <= 100")
        if self.scaling == "fixed":
            if self.fixed_range is None or len(self.fixed_range) != 2 or not self.fixed_range[0] < self.fixed_range[1]:
                raise ModelSpecError(
                    f"scaling 'fixed' needs fixed_range=(low, high) with low < high, got {self.fixed_range}"
                )
        if not isinstance(self.chip_size, int) or self.chip_size < 8:
            raise ModelSpecError(f"model spec chip_size must be an integer >= 8, got {self.chip_size!r}")
        if not (self.resolution_m > 0):
            raise ModelSpecError(f"model spec resolution_m must be positive, got {self.resolution_m!r}")
        self.structure.validate(self.labels)
        if self.tta not in TTA_MODES:
            raise ModelSpecError(f"model spec tta {self.tta!r} is unknown: use one of {', '.join(TTA_MODES)}")
        if self.spec_version > SPEC_VERSION:
            raise ModelSpecError(
                f"model spec version {self.spec_version} is newer than this scenetag "
                f"understands ({SPEC_VERSION}): upgrade scenetag"
            )

    # -- construction -----------------------------------------------------
    @classmethod
    def create(
        cls,
        name: str,
        arch: str,
        labels: Sequence[str],
        thresholds: float | Sequence[float] | Mapping[str, float] = 0.2,
        **kwargs: Any,
    ) -> "ModelSpec":
        """Build a spec; ``thresholds`` may be one global value, a list or a label→value map."""
        return cls(name=name, arch=arch, labels=tuple(labels),
                   thresholds=expand_thresholds(thresholds, labels), **kwargs)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelSpec":
        """Build and validate a spec from its JSON form."""
        if not isinstance(data, Mapping):
            raise ModelSpecError(f"model spec must be a JSON object, got {type(data).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelSpecError(f"model spec has unknown fields {unknown}; known fields: {sorted(known)}")
        for required in ("name", "arch", "labels"):
            if required not in data:
                raise ModelSpecError(f"model spec lacks the field {required!r}")
        kwargs = dict(data)
        kwargs["thresholds"] = expand_thresholds(kwargs.get("thresholds", 0.2), kwargs["labels"])
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise ModelSpecError(f"model spec is malformed: {exc}") from exc

    @classmethod
    def from_json(cls, text: str | bytes) -> "ModelSpec":
        """Parse a spec from JSON text."""
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ModelSpecError(f"model spec is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    @classmethod
    def from_file(cls, path: str | Path) -> "ModelSpec":
        """Read a spec from a JSON file (the ``--spec`` file)."""
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ModelSpecError(f"spec file {str(path)!r} could not be read ({exc.strerror or exc}): "
                                 "pass --spec PATH to a JSON spec") from exc
        return cls.from_json(text)

    # -- serialisation ----------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the spec."""
        d = asdict(self)
        d["extra"] = dict(self.extra)
        d["structure"] = self.structure.to_dict()
        return d

    def to_json(self) -> str:
        """Canonical JSON of the spec (sorted keys)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def with_thresholds(self, thresholds: float | Sequence[float] | Mapping[str, float]) -> "ModelSpec":
        """A copy of the spec with other thresholds."""
        return replace(self, thresholds=expand_thresholds(thresholds, self.labels))

    def with_structure(self, structure: LabelStructure | Mapping[str, Any] | None) -> "ModelSpec":
        """A copy of the spec with another label structure (None: none)."""
        return replace(self, structure=structure if structure is not None else LabelStructure())

    def tags(self, probs: "np.ndarray", structured: bool = True) -> "np.ndarray":
        """Boolean ``(N, L)`` tags of ``(N, L)`` probabilities.

        Each label at or above its threshold, then (unless ``structured`` is
        False) the spec's label structure enforced: one label per exclusive
        group, suppressed labels removed.  The one place tags are made: the
        writer, evaluation and calibration all call it.
        """
        import numpy as np

        probs = np.asarray(probs)
        tagged = probs >= np.asarray(self.thresholds, dtype=np.float32)[None, :]
        if structured and self.structure:
            tagged = self.structure.apply(tagged, probs, self.labels)
        return tagged

    @property
    def weather_labels(self) -> tuple[str, ...]:
        """Labels of the exclusive group named "weather" (the GeoPackage's ``weather`` field); () without one."""
        from scenetag.model.structure import WEATHER_GROUP

        return tuple(self.structure.exclusive.get(WEATHER_GROUP, ()))

    @property
    def grouped_labels(self) -> frozenset[str]:
        """Labels in some exclusive group (weather-like, not land cover)."""
        return frozenset(lab for group in self.structure.exclusive.values() for lab in group)

    @property
    def n_labels(self) -> int:
        return len(self.labels)

    @property
    def n_bands(self) -> int:
        return len(self.bands)


def expand_thresholds(
    thresholds: float | Sequence[float] | Mapping[str, float], labels: Sequence[str]
) -> tuple[float, ...]:
    """One threshold per label from a global value, a sequence, or a label→value map.

    A map may give only some labels; the others take the map's ``"*"`` entry
    or 0.2.
    """
    labels = tuple(labels)
    if isinstance(thresholds, (int, float)):
        return tuple(float(thresholds) for _ in labels)
    if isinstance(thresholds, Mapping):
        unknown = sorted(set(thresholds) - set(labels) - {"*"})
        if unknown:
            raise ModelSpecError(f"thresholds name unknown labels {unknown}; labels are {list(labels)}")
        default = float(thresholds.get("*", 0.2))
        return tuple(float(thresholds.get(lab, default)) for lab in labels)
    try:
        values = tuple(float(t) for t in thresholds)
    except (TypeError, ValueError) as exc:
        raise ModelSpecError(f"thresholds {thresholds!r} are not numbers") from exc
    if len(values) == 1 and len(labels) > 1:
        return values * len(labels)
    return values
