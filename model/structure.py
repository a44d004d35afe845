"""Label structure: exclusive groups and suppression rules, applied to thresholded tags.

Planet's labels are not independent: every chip has exactly one weather label
(clear, partly_cloudy, haze, cloudy), and a cloudy chip shows nothing else.
A :class:`LabelStructure` declares such facts and :meth:`LabelStructure.apply`
enforces them on the tags that the thresholds made:

1. *exclusive* groups: exactly one label of each group is tagged, the one with
   the highest probability, whatever the thresholds say.  Ties go to the label
   that comes first in the group (a fixed, documented choice).
2. *suppresses* rules, applied after the groups: a tagged label removes the
   labels it names (``cloudy`` removes every non-weather label).

The structure lives in the :class:`~scenetag.model.spec.ModelSpec` (so in the
ONNX metadata) and is validated when the spec is read; the spec's
:meth:`~scenetag.model.spec.ModelSpec.tags` is the one place it is applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from scenetag.errors import ModelSpecError

#: Planet's weather labels: exactly one per chip.
PLANET_WEATHER = ("clear", "partly_cloudy", "haze", "cloudy")
#: Name of the group whose tag is written as the GeoPackage's ``weather`` field.
WEATHER_GROUP = "weather"


@dataclass(frozen=True)
class LabelStructure:
    """Exclusive label groups and suppression rules of a spec (both may be empty).

    Attributes:
        exclusive: Group name → labels, exactly one of which is tagged per chip.
        suppresses: Label → labels removed from a chip where it is tagged.
    """

    exclusive: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    suppresses: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "exclusive", {str(k): tuple(v) for k, v in dict(self.exclusive).items()})
        object.__setattr__(self, "suppresses", {str(k): tuple(v) for k, v in dict(self.suppresses).items()})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "LabelStructure":
        """From the spec's JSON form ``{"exclusive": {...}, "suppresses": {...}}``."""
        data = dict(data or {})
        unknown = sorted(set(data) - {"exclusive", "suppresses"})
        if unknown:
            raise ModelSpecError(f"label structure has unknown fields {unknown}: use 'exclusive' and 'suppresses'")
        for key in ("exclusive", "suppresses"):
            value = data.get(key, {})
            if not isinstance(value, Mapping) or not all(
                    isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v) for v in value.values()):
                raise ModelSpecError(f"label structure {key!r} must map names to lists of labels, got {value!r}")
        return cls(data.get("exclusive", {}), data.get("suppresses", {}))

    def to_dict(self) -> dict[str, dict[str, list[str]]]:
        """JSON-ready form."""
        return {"exclusive": {k: list(v) for k, v in self.exclusive.items()},
                "suppresses": {k: list(v) for k, v in self.suppresses.items()}}

    def __bool__(self) -> bool:
        return bool(self.exclusive or self.suppresses)

    def validate(self, labels: Sequence[str]) -> None:
        """Refuse groups or rules naming unknown labels, overlapping groups, or a label suppressing itself."""
        known = set(labels)
        owner: dict[str, str] = {}
        for name, group in self.exclusive.items():
            if len(group) < 2:
                raise ModelSpecError(f"exclusive group {name!r} has {len(group)} label(s) {list(group)}: "
                                     "a group needs at least two labels")
            for label in group:
                if label not in known:
                    raise ModelSpecError(f"exclusive group {name!r} names the unknown label {label!r}: "
                                         f"labels are {list(labels)}")
                if label in owner:
                    where = "twice in that group" if owner[label] == name else f"also in the group {owner[label]!r}"
                    raise ModelSpecError(f"label {label!r} of exclusive group {name!r} is {where}: "
                                         "a label may be in one exclusive group only")
                owner[label] = name
        for label, removed in self.suppresses.items():
            for name in (label, *removed):
                if name not in known:
                    raise ModelSpecError(f"suppression rule of {label!r} names the unknown label {name!r}: "
                                         f"labels are {list(labels)}")
            if label in removed:
                raise ModelSpecError(f"label {label!r} suppresses itself: remove it from its own rule")

    def group_of(self, label: str) -> str | None:
        """The exclusive group holding ``label``, or None."""
        return next((name for name, group in self.exclusive.items() if label in group), None)

    def apply(self, tagged: np.ndarray, probs: np.ndarray, labels: Sequence[str]) -> np.ndarray:
        """Tags ``tagged`` (boolean ``(N, L)``, from the thresholds) with the structure enforced; a new array."""
        out = np.array(tagged, dtype=bool, copy=True)
        probs = np.asarray(probs)
        index = {lab: j for j, lab in enumerate(labels)}
        rows = np.arange(len(out))
        for group in self.exclusive.values():
            cols = np.asarray([index[lab] for lab in group])
            winner = cols[np.argmax(probs[:, cols], axis=1)]  # argmax: the first of equal maxima
            out[:, cols] = False
            out[rows, winner] = True
        for label, removed in self.suppresses.items():
            on = out[:, index[label]]
            out[np.ix_(on, [index[lab] for lab in removed])] = False
        return out


def planet_structure(labels: Sequence[str]) -> LabelStructure:
    """Planet's weather group and the rule that ``cloudy`` removes every non-weather label."""
    others = tuple(lab for lab in labels if lab not in PLANET_WEATHER)
    return LabelStructure({WEATHER_GROUP: PLANET_WEATHER}, {"cloudy": others})


def structure_for(labels: Sequence[str]) -> LabelStructure:
    """The structure a new model trained on ``labels`` declares: Planet's (:func:`planet_structure`)
    where all four Planet weather labels are among them, none otherwise (nothing is known of them)."""
    return planet_structure(labels) if set(PLANET_WEATHER) <= set(labels) else LabelStructure()
