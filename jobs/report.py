"""The run report of a batch: one record per scene, as JSON and as a short summary.

Statuses: ``ok`` (chips classified), ``empty`` (nothing to classify, an output
was still written), ``skipped`` (the output was already up to date) and
``failed`` (an expected per-scene error, after the retries; ``error`` says
what).  Only ``failed`` makes the batch fail.
"""

from __future__ import annotations

import enum
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from scenetag.atomic import atomic_path

#: Version of the report's JSON layout.
REPORT_VERSION = 1


class Status(str, enum.Enum):
    """What became of a scene; its value is what the report and the ``runs`` table say."""

    PENDING = "pending"
    OK = "ok"
    EMPTY = "empty"
    SKIPPED = "skipped"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


#: The statuses a finished scene can have, in the summary's order.
STATUSES = (Status.OK, Status.EMPTY, Status.SKIPPED, Status.FAILED)


@dataclass
class SceneRecord:
    """What happened to one scene."""

    scene: str
    output: str
    status: Status = Status.PENDING
    chips: int = 0
    chips_total: int = 0
    chips_skipped_nodata: int = 0
    seconds: float = 0.0
    attempts: int = 0
    strips: int = 0
    error: str | None = None
    reason: str = ""

    def update_from(self, result) -> None:
        """Take the counts and reason of the scene's :class:`~jobs.scene_job.SceneResult`."""
        self.chips = result.n_chips_classified
        self.chips_total = result.n_chips_total
        self.chips_skipped_nodata = result.n_chips_skipped_nodata
        self.reason = result.reason


@dataclass
class BatchReport:
    """Every scene's record, plus what the batch ran on."""

    started_at: str
    finished_at: str = ""
    seconds: float = 0.0
    out_dir: str = ""
    scheduler: str = ""
    dashboard: str | None = None
    n_workers: int = 0
    model: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    scenes: list[SceneRecord] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Scenes per status (every status present, zeros included)."""
        out = dict.fromkeys((str(st) for st in STATUSES), 0)
        for s in self.scenes:
            out[str(s.status)] = out.get(str(s.status), 0) + 1
        return out

    @property
    def failed(self) -> list[SceneRecord]:
        return [s for s in self.scenes if s.status == Status.FAILED]

    @property
    def succeeded(self) -> bool:
        """True when no scene failed."""
        return not self.failed

    def to_dict(self) -> dict:
        d = asdict(self)
        d["version"] = REPORT_VERSION
        d["counts"] = self.counts()
        d["succeeded"] = self.succeeded
        return d

    def write(self, path: str | os.PathLike) -> Path:
        """Write the JSON report atomically (:func:`~scenetag.atomic.atomic_path`, as every output)."""
        path = Path(path)
        # Replaced on purpose: the report is the batch's own file, rewritten by every batch (and at the end).
        with atomic_path(path, replace=True) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def summary(self, width: int = 40) -> str:
        """A few lines for people: the totals, then one line per scene."""
        c = self.counts()
        n = len(self.scenes)
        done = c["ok"] + c["empty"]
        rate = f", {60 * done / self.seconds:.1f} scenes/min" if self.seconds and done else ""
        lines = [f"{n} scene{'s' if n != 1 else ''}: {c['ok']} ok, {c['empty']} empty, "
                 f"{c['skipped']} skipped, {c['failed']} failed in {self.seconds:.1f} s{rate}"]
        for s in self.scenes:
            name = Path(s.scene).name
            name = name if len(name) <= width else name[: width - 1] + "…"
            note = s.error or s.reason
            lines.append(f"  {str(s.status):<7} {name:<{width}} {s.chips:>7} chips {s.seconds:>7.1f} s"
                         + (f"  {note}" if note else ""))
        return "\n".join(lines)
