"""Know the work before doing it: what ``run`` or ``batch`` would do to each scene, without classifying.

A dry run takes the steps a job takes before its first chip is read, and
only those: the output checks and the up-to-date decision of
:func:`~jobs.scene_job.prepare_scene` (with :func:`~jobs.scene_job.output_state`),
and the plan of :func:`~jobs.planning.plan_scene` (bands, resolution, grid,
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
from scenetag.jobs.planning import ScenePlan, plan_scene
from scenetag.jobs.scene_job import output_state, prepare_scene
from scenetag.outputs_schema.outputs import SceneOutputs
from scenetag.tiler.location import display_name


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


def _plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _stretch_text(plan: ScenePlan) -> str:
    if plan.stretch is None:
        return f"none: {plan.info.dtype} passes through"
    p_lo, p_hi = plan.spec.percentiles if plan.spec.scaling != "fixed" else (None, None)
    how = f"p{p_lo:g}..p{p_hi:g} of the scene" if p_lo is not None else "the spec's fixed range"
    pairs = ", ".join(f"{lo:g}..{hi:g}" for lo, hi in zip(plan.stretch.low, plan.stretch.high))
    return f"{how}, per band: {pairs}"


def _output_text(preview: ScenePreview) -> str:
    return ", ".join(preview.outputs) + f" ({preview.output_state})"


def _action_text(preview: ScenePreview) -> str:
    return preview.action + (f": {preview.reason}" if preview.reason else "")


def scene_table(preview: ScenePreview) -> str:
    """One scene's plan for people: a row per thing decided (``run --dry-run``)."""
    rows: list[tuple[str, str]] = [("scene", preview.scene)]
    plan = preview.plan
    if plan is not None:
        info, spec, grid = plan.info, plan.spec, plan.grid
        rows += [
            ("size", f"{info.width}x{info.height} px, {_plural(info.count, 'band')} {info.dtype}, "
                     f"{info.crs.to_string()}, {info.resolution_m:.3g} m/pixel"),
            ("model", f"{spec.name}: {spec.chip_size} px chips at {spec.resolution_m:g} m/pixel, "
                      f"bands {','.join(spec.bands)}"),
            ("bands", plan.bands_used),
            ("resolution", f"factor {plan.factor:.3g}: chips read at the model's resolution (--resample)"
                           if plan.options.resample else "factor 1: chips read at the scene's resolution"),
            ("grid", f"{grid.shape[0]} x {grid.shape[1]} chips of {grid.chip:,} px, stride {grid.stride:,} px, "
                     f"edge {grid.edge.value}"),
            ("chips", f"{len(grid):,} to classify, {grid.n_skipped:,} skipped at the edge; chips under "
                      f"{plan.options.min_valid:.0%} valid are found (and skipped) while reading"),
            ("stretch", _stretch_text(plan)),
        ]
        rows += [("note", n) for n in plan.notes] + [("warning", w) for w in plan.warnings]
    rows += [("outputs", _output_text(preview)), ("action", _action_text(preview))]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def batch_table(previews: Sequence[ScenePreview], width: int = 40) -> str:
    """The batch's plan for people: a row per scene, the totals, then what each scene's plan noticed."""
    header = ("scene", "size", "bands", "factor", "chips", "edge", "output", "action")
    rows = []
    for p in previews:
        name = display_name(p.scene)
        name = name if len(name) <= width else name[: width - 1] + "…"
        plan = p.plan
        rows.append((name,
                     f"{plan.info.width}x{plan.info.height}" if plan else "-",
                     ",".join(map(str, plan.bands)) if plan else "-",
                     f"{plan.factor:.3g}" if plan else "-",
                     f"{len(plan.grid):,}" if plan else "-",
                     f"{plan.grid.n_skipped:,}" if plan else "-",
                     p.output_state, p.action))
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    right = {3, 4, 5}
    lines = ["  ".join(f"{c:>{w}}" if i in right else f"{c:<{w}}" for i, (c, w) in enumerate(zip(r, widths)))
             .rstrip() for r in [header, *rows]]
    todo = [p for p in previews if p.action == Action.CLASSIFY]
    chips = sum(len(p.plan.grid) for p in todo if p.plan is not None)
    counts = {a: sum(p.action == a for p in previews) for a in (Action.CLASSIFY, Action.SKIP, Action.REFUSE,
                                                                Action.FAIL)}
    lines.append(f"{_plural(len(previews), 'scene')}: {counts[Action.CLASSIFY]} to classify "
                 f"({_plural(chips, 'chip')}), {counts[Action.SKIP]} up to date, "
                 f"{counts[Action.REFUSE]} refused, {counts[Action.FAIL]} would fail")
    for p in previews:
        name = display_name(p.scene)
        lines.append(f"  {name}: output {_output_text(p)}")
        lines += [f"  {name}: bands {p.plan.bands_used}"] if p.plan is not None else []
        lines += [f"  {name}: {n}" for n in (p.plan.notes + p.plan.warnings if p.plan else ())]
        if p.reason and p.action != Action.SKIP:
            lines.append(f"  {name}: {p.action}: {p.reason}")
    return "\n".join(lines)
