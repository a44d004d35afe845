"""Column-oriented results of classifying chips: what the writer takes in.

Results from several strips of one scene concatenate into one table, in grid
order, so the writer sees the same thing however the work was split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

_INT_COLUMNS = ("row", "col", "x_off", "y_off", "width", "height")


@dataclass
class ChipTable:
    """Classified chips as arrays, plus the count of chips skipped for low validity."""

    row: np.ndarray
    col: np.ndarray
    x_off: np.ndarray
    y_off: np.ndarray
    width: np.ndarray
    height: np.ndarray
    valid_fraction: np.ndarray
    probs: np.ndarray
    n_skipped_nodata: int = 0
    seconds_read: float = 0.0
    seconds_infer: float = 0.0
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.row)
        for name in (*_INT_COLUMNS, "valid_fraction", "probs"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"column {name} has {len(getattr(self, name))} rows, expected {n}")
        if self.probs.ndim != 2:
            raise ValueError(f"probs must be 2-D (chips, labels), got shape {self.probs.shape}")

    def __len__(self) -> int:
        return len(self.row)

    @classmethod
    def empty(cls, n_labels: int) -> "ChipTable":
        z = np.zeros(0, np.int32)
        return cls(z, z, z, z, z, z, np.zeros(0, np.float32), np.zeros((0, n_labels), np.float32))

    @classmethod
    def from_rows(cls, rows: Sequence[tuple], probs: np.ndarray, n_skipped: int = 0) -> "ChipTable":
        """From ``(row, col, x_off, y_off, width, height, valid_fraction)`` tuples and probabilities."""
        n_labels = probs.shape[1] if probs.ndim == 2 else 0
        if not rows:
            t = cls.empty(n_labels)
            t.n_skipped_nodata = n_skipped
            return t
        a = np.asarray(rows, dtype=np.float64)
        ints = [a[:, i].astype(np.int32) for i in range(6)]
        return cls(*ints, a[:, 6].astype(np.float32), probs.astype(np.float32), n_skipped)

    @classmethod
    def concat(cls, tables: Iterable["ChipTable"], n_labels: int) -> "ChipTable":
        """Join tables and sort them into grid order (row, then column)."""
        tables = [t for t in tables]
        if not tables:
            return cls.empty(n_labels)
        cols = {name: np.concatenate([getattr(t, name) for t in tables])
                for name in (*_INT_COLUMNS, "valid_fraction")}
        probs = np.concatenate([t.probs.reshape(-1, n_labels) for t in tables])
        order = np.lexsort((cols["col"], cols["row"]))
        out = cls(**{k: v[order] for k, v in cols.items()}, probs=probs[order],
                  n_skipped_nodata=sum(t.n_skipped_nodata for t in tables),
                  seconds_read=sum(t.seconds_read for t in tables),
                  seconds_infer=sum(t.seconds_infer for t in tables))
        return out


def top_and_weather(probs: np.ndarray, tagged: np.ndarray, labels: Sequence[str],
                    weather: Sequence[str] = (), grouped: Iterable[str] = ()) -> tuple[np.ndarray, np.ndarray,
                                                                                        np.ndarray]:
    """Per chip: the top land-cover label and its probability, and the weather tag.

    The top label is the most probable label outside the spec's exclusive
    groups (``grouped``), so the map is coloured by what is on the ground, not
    by the weather; with no groups it is the most probable of all labels.  The
    weather is the tagged label of ``weather`` (the spec's "weather" group:
    exactly one per chip), None where there is no such group.
    """
    labels = list(labels)
    grouped = set(grouped)
    land = [j for j, lab in enumerate(labels) if lab not in grouped] or list(range(len(labels)))
    names = np.asarray(labels, dtype=object)
    rows = np.arange(len(probs))
    top = np.asarray(land)[probs[:, land].argmax(axis=1)] if len(probs) else np.zeros(0, int)
    if weather:
        cols = np.asarray([labels.index(lab) for lab in weather])
        hit = tagged[:, cols]
        sky = np.where(hit.any(axis=1), names[cols][hit.argmax(axis=1)], None)
    else:
        sky = np.full(len(probs), None, dtype=object)
    return names[top], probs[rows, top], sky.astype(object)
