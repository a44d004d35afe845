"""Know the work before doing it: what ``run`` or ``batch`` would do to each scene, without classifying.

A dry run takes the steps a job takes before its first chip is read, and
only those: the output checks and the up-to-date decision of
:func:`~jobs.scene_job.prepare_scene` (with :func:`~jobs.scene_job.output_state`),
and the plan of :func:`~jobs.scene_job.plan_scene` (bands, resolution, grid,
stretch).  Nothing is written, no lock is taken, no cluster is started, and
the model is read only for its spec (:class:`~jobs.models.PlannedModel`).
What it cannot know without reading every chip is said so: chips with too
little valid area are found while reading.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from scenetag.errors import OutputError, ScenetagError
from scenetag.jobs.models import SceneModel
from scenetag.jobs.options import RunOptions
from scenetag.jobs.scene_job import ScenePlan, output_state, plan_scene, prepare_scene
from scenetag.outputs_schema.outputs import SceneOutputs


class Action:
    """What the job would do with a scene."""

    CLASSIFY = "classify"
    SKIP = "skip"
    REFUSE = "refuse"
    FAIL = "fail"


@dataclass
class ScenePreview:
    """What a job would do with one scene, and the plan it would follow."""

    scene: str
    outputs: tuple[str, ...]
    #: ``new``, ``up to date``, ``out of date``, ``exists`` or ``unknown`` (see :func:`preview_scene`).
    output_state: str
    #: One of :class:`Action`.
    action: str
    #: Why the action is skip, refuse or fail (the job's own message).
    reason: str = ""
    plan: ScenePlan | None = field(default=None, repr=False)

    @property
    def would_fail(self) -> bool:
        """Whether the job would refuse the scene or fail on it."""
        return self.action in (Action.REFUSE, Action.FAIL)

    def to_dict(self) -> dict:
        """Plain values for JSON: the scene, its outputs, the action and the plan's numbers."""
        out: dict = {"scene": self.scene, "outputs": list(self.outputs), "output_state": self.output_state,
                     "action": self.action, "reason": self.reason, "plan": None}
        plan = self.plan
        if plan is not None:
            info, grid, spec = plan.info, plan.grid, plan.spec
            out["plan"] = {
                "size": [info.width, info.height], "band_count": info.count, "dtype": info.dtype,
                "crs": info.crs.to_string(), "resolution_m": info.resolution_m,
                "model": {"name": spec.name, "chip_size": spec.chip_size, "resolution_m": spec.resolution_m,
                          "bands": list(spec.bands)},
                "bands": list(plan.bands), "bands_used": plan.bands_used,
                "resample": plan.options.resample, "resolution_factor": plan.factor,
                "chip_px": grid.chip, "stride_px": grid.stride, "edge": grid.edge.value,
                "grid": list(grid.shape), "chips": len(grid), "chips_skipped_edge": grid.n_skipped,
                "stretch": None if plan.stretch is None else
                {"low": list(plan.stretch.low), "high": list(plan.stretch.high)},
                "notes": list(plan.notes), "warnings": list(plan.warnings),
            }
        return out


def preview_scene(scene: str | os.PathLike, out: str | os.PathLike, model: SceneModel, options: RunOptions, *,
                  skip_current: bool, overwrite: bool) -> ScenePreview:
    """What the job would do with ``scene`` (``skip_current`` and ``overwrite`` as in ``prepare_scene``).

    Errors are not raised: a refusal (an output that exists, or was made from
    another scene) or a failure (an unreadable scene, a refused resampling)
    becomes the preview's action and reason, with as much of the plan as can
    be made.  ``output_state`` says what the output is now: ``new`` (absent),
    ``up to date`` (same scene, model and options), ``out of date``, ``exists``
    (a file that is no scenetag GeoPackage, or one that cannot be compared).
    """
    scene, out = str(scene), str(out)
    try:
        outputs = SceneOutputs(out, options.raster, options.to_crs)
    except ScenetagError as exc:
        return ScenePreview(scene, (out,), "unknown", Action.REFUSE, str(exc))
    paths = tuple(str(p) for p in outputs.paths)
    state, shown = None, "new"
    if any(Path(p).exists() for p in paths):
        shown = "exists"
        if Path(scene).is_file():
            try:
                state = output_state(scene, outputs, model, options)
                shown = "up to date" if state.current else "out of date" if state.record else "exists"
            except ScenetagError:
                pass  # prepare_scene meets the same error and says it
    folder = Path(out).parent
    try:
        if not folder.is_dir() and skip_current:
            # A batch creates its folder: every output is new, and only the plan can fail.
            prep_plan, action, reason = plan_scene(scene, model.spec, options), Action.CLASSIFY, ""
        else:
            # The state read above, so the scene is hashed once; None where it could not be read,
            # and prepare_scene meets the error as the job would.
            prep = prepare_scene(scene, out, model, options, skip_current, overwrite, state=state)
            if prep.skipped:
                return ScenePreview(scene, paths, shown, Action.SKIP, "output up to date (same signature)",
                                    _plan_or_none(scene, model, options))
            prep_plan, action, reason = prep.plan, Action.CLASSIFY, ""
    except ScenetagError as exc:
        action = Action.REFUSE if isinstance(exc, OutputError) else Action.FAIL
        return ScenePreview(scene, paths, shown, action, str(exc),
                            _plan_or_none(scene, model, options) if action == Action.REFUSE else None)
    return ScenePreview(scene, paths, shown, action, reason, prep_plan)


def _plan_or_none(scene: str, model: SceneModel, options: RunOptions) -> ScenePlan | None:
    """The plan where it can be made (for a scene that is skipped or refused, to show what it holds)."""
    try:
        return plan_scene(scene, model.spec, options)
    except ScenetagError:
        return None


def preview_batch(scenes: Sequence[Path], outs: Sequence[Path], model: SceneModel, options: RunOptions, *,
                  force: bool) -> list[ScenePreview]:
    """What ``batch`` would do with each scene (expanded inputs and their outputs, as the batch names them)."""
    return [preview_scene(s, o, model, options, skip_current=not force, overwrite=True)
            for s, o in zip(scenes, outs)]
