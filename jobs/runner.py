"""The scene job: each scene through prepare → classify strips → write, on any executor.

This is the one path every scene takes.  ``run`` is it with one scene on an
:class:`~jobs.executors.InProcessExecutor`; ``batch`` and ``run --scheduler``
are it on a :class:`~jobs.executors.DaskExecutor`.  The executor is the only
thing that differs: where tasks run, how a scene is cut into strips, and
whether progress can reach this process.

Per scene, the tasks are ``prepare`` (:func:`~jobs.scene_job.prepare_scene`),
``hash`` (the checksum, beside the classification when the skip check did
not need it first), one ``classify`` per strip (the only tasks that run the
model; they ask for ``resources``, e.g. ``GPU=1``) and ``write``, the scene's
single writer; on a cluster of GPU workers, ``stream`` tasks before it
append the chips of a few strips each as soon as those are classified.
Failures follow :mod:`jobs.failures`: a per-scene failure is retried from
the start (up to ``retries`` times) when it may go away, then
recorded, and the other scenes go on; a worker that died running a scene
(Dask's ``KilledWorker``) is such a failure too; anything else cancels the
job and is raised.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from scenetag.atomic import discard
from scenetag.jobs.classify import Progress
from scenetag.jobs.executors import Executor
from scenetag.jobs.failures import JobFailure, SceneFailure, no_worker_left, run_task, worker_died
from scenetag.jobs.models import SceneModel
from scenetag.jobs.options import RunOptions
from scenetag.jobs.progress import SceneChips
from scenetag.jobs.report import SceneRecord, Status
from scenetag.jobs.scene_job import (
    Prepared,
    SceneResult,
    classify_strip,
    finish_parts,
    hash_scene,
    open_parts,
    open_write,
    prepare_scene,
    write_part,
    write_scene,
)
from scenetag.outputs_schema.outputs import SceneWrite
from scenetag.outputs_schema.run_record import read_run_record
from scenetag.outputs_schema.stream import WrittenParts, part_groups
from scenetag.tiler.location import is_remote, redact

log = logging.getLogger(__name__)

#: ``factory(total_chips)`` → a callback taking the number of chips just done.
ProgressFactory = Callable[[int], Progress]

#: Stream the chips layer while the scene is classified: on a thread where the executor's tasks share
#: this process, else by part tasks.  False writes it at the end: kept only for the tests and
#: benchmarks that compare the two.
STREAMED_WRITE = True


@dataclass
class _Scene:
    record: SceneRecord
    attempt: int = 0
    wall_start: float = 0.0
    futures: list = field(default_factory=list)
    result: SceneResult | None = None
    #: What the scene is read from (the record's ``scene`` is what is shown).
    location: str = ""
    chips: SceneChips | None = None  # the chip progress of the current try
    stream: SceneWrite | None = None  # the current try's streamed write (in this process)
    parts: WrittenParts | None = None  # or its temporary, written by part tasks (on a cluster)
    relayed: Progress | None = None  # its callback as the tasks hold it (the executor's relay)


def run_scenes(
    executor: Executor,
    records: Sequence[SceneRecord],
    model: SceneModel,
    options: RunOptions,
    *,
    skip_current: bool = False,
    overwrite: bool = False,
    retries: int = 0,
    resources: dict | None = None,
    progress: ProgressFactory | None = None,
    on_done: Callable[[SceneRecord], None] | None = None,
    raise_scene_errors: bool = False,
    locations: Sequence[str] | None = None,
) -> list[SceneResult | None]:
    """Run the scene of every record on ``executor``; returns each :class:`SceneResult` in record order.

    Args:
        executor: Where the tasks run.
        records: One per scene (scene and output paths); updated as scenes finish.
        model: The model as the tasks see it (a :class:`~jobs.models.LocalModel` in
            this process, a :class:`~jobs.models.ShippedModel` on a cluster).
        options: The scene job's options.
        skip_current: Skip scenes whose outputs are up to date (same signature).
        overwrite: Let the write replace existing outputs.
        retries: Tries again of a scene after a per-scene failure.
        resources: Resources the classify tasks ask for (``{"GPU": 1}``).
        progress: Progress factory: called with each planned scene's chip count, it returns the
            callback that the scene's classify tasks call with chips done (relayed from the
            cluster by the executor); a scene's count reaches its total when it is written.
        on_done: Called with each record when its scene is finished.
        raise_scene_errors: Raise a scene's failure (after its retries) instead of recording it.
        locations: What each scene is read from, where that differs from the record's ``scene``
            (which is shown: a signed URL's query is kept out of the report).

    A scene that failed has None as its result.  Errors that are not
    per-scene failures cancel everything and are raised.
    """
    states = [_Scene(r, location=loc) for r, loc in zip(records, locations or [r.scene for r in records])]
    owner: dict[Any, tuple[_Scene, int, str]] = {}

    def submit(state: _Scene, stage: str, fn: Callable, *args: Any, watch: bool = False, **kwargs: Any) -> Any:
        fut = executor.submit(stage, run_task, stage, fn, *args, **kwargs)
        state.futures.append(fut)
        if watch:
            owner[fut] = (state, state.attempt, stage)
            executor.watch(fut)
        return fut

    def start(state: _Scene) -> None:
        state.attempt += 1
        state.record.attempts = state.attempt
        if state.attempt == 1:
            state.wall_start = time.time()
        submit(state, "prepare", prepare_scene, state.location, state.record.output, model, options,
               skip_current, overwrite, watch=True)

    def end_stream(state: _Scene) -> None:
        if state.stream is not None:
            state.stream.abort()  # nothing left of it (a finished write has nothing left to remove)
            state.stream = None
        if state.parts is not None:
            discard(state.parts.tmp)  # the same, for the part tasks' temporary (renamed if the write finished)
            state.parts = None

    def end_chips(state: _Scene, written: bool) -> None:
        if state.chips is not None:
            state.chips.complete() if written else state.chips.stop()
            executor.unrelay(state.relayed)
            state.chips = state.relayed = None

    def finish(state: _Scene, status: Status) -> None:
        end_chips(state, written=status in (Status.OK, Status.EMPTY))
        end_stream(state)
        state.record.status = status
        state.record.seconds = time.time() - state.wall_start
        state.futures.clear()  # release the scene's results on the cluster
        if on_done:
            on_done(state.record)

    def fail(state: _Scene, failure: SceneFailure) -> None:
        exc = failure.error
        end_chips(state, written=False)
        executor.cancel(state.futures)
        state.futures.clear()
        end_stream(state)
        if failure.retry and state.attempt <= retries:
            log.warning("%s failed (attempt %d of %d), trying again: %s", state.record.scene, state.attempt,
                        retries + 1, exc)
            start(state)
            return
        if raise_scene_errors:
            raise exc
        log.error("%s failed: %s", state.record.scene, exc)
        state.record.error = str(exc) or type(exc).__name__
        finish(state, Status.FAILED)

    def planned(state: _Scene, prep: Prepared) -> None:
        plan = prep.plan
        identity = prep.identity or submit(state, "hash", hash_scene, prep.source or prep.scene, side=True)
        n_cols = max(1, plan.grid.shape[1])
        strips = [None] if executor.chips_per_task is None else plan.grid.strips(
            max(1, executor.chips_per_task // n_cols))
        state.record.strips = len(strips)
        state.record.chips_total = len(plan.grid) + plan.grid.n_skipped
        if progress is not None:
            state.chips = SceneChips(progress(len(plan.grid)), len(plan.grid))
            state.relayed = executor.relay(state.chips)
        # The chips are written as they are classified: the write runs beside the classification, and
        # only its tail after it (docs/performance.md).  Where the tasks share this process a thread
        # takes each batch.  On a cluster whose classification goes to GPUs (``resources``) a chain of
        # part tasks takes the strips a few at a time (outputs_schema.stream), and the write task the
        # last ones.  On CPU workers no core is idle for them (they measured a loss, docs/performance.md),
        # so the write task takes every strip.
        write = write_scene
        if STREAMED_WRITE and executor.shares_objects:
            state.stream = open_write(prep)
            write = functools.partial(write_scene, stream=state.stream)
        tables = [submit(state, "classify", classify_strip, plan, cells, model, state.relayed, state.stream,
                         resources=resources) for cells in strips]
        in_parts = STREAMED_WRITE and not executor.shares_objects and bool(resources)
        groups = part_groups([len(cells) for cells in strips]) if in_parts else []
        if len(groups) > 1:
            state.parts = open_parts(prep)
            parts = state.parts
            for group in groups[:-1]:
                parts = submit(state, "stream", write_part, prep, parts, *(tables[i] for i in group))
            submit(state, "write", finish_parts, prep, model, identity, parts, *tables, watch=True)
            return
        submit(state, "write", write, prep, model, identity, *tables, watch=True)

    for state in states:
        start(state)
    try:
        for fut in executor.completed():
            state, attempt, stage = owner.pop(fut, (None, 0, ""))
            if state is None or attempt != state.attempt or fut.cancelled():
                continue
            try:
                value = fut.result()  # anything but a per-scene failure is raised here, with its traceback
            except Exception as exc:
                died = worker_died(exc)  # a worker died running the scene: it fails, the others go on
                if died is None:
                    stop = no_worker_left(exc, state.record.scene, stage)  # the cluster's, not the scene's
                    if stop is not None:
                        raise stop from exc
                    raise
                # Tried again (within --retries): Dask hands a worker more tasks than it has threads, so
                # a scene queued beside the one that killed the worker can die with it as a bystander.
                value = SceneFailure(died, stage, retry=True)
            if isinstance(value, JobFailure):
                raise value.error  # not about one scene: the job stops (and the others are cancelled)
            if isinstance(value, SceneFailure):
                fail(state, value)
            elif stage == "prepare" and value.skipped and state.attempt > 1:
                # An earlier try in this job wrote the outputs, then a worker died before it was told.
                written = read_run_record(state.record.output)
                state.record.update_from(written)
                finish(state, Status(written.status))
            elif stage == "prepare" and value.skipped:
                state.record.reason = "output up to date (same signature)"
                finish(state, Status.SKIPPED)
            elif stage == "prepare":
                planned(state, value)
            else:
                state.result = value
                state.record.update_from(value)
                finish(state, value.status)
    except BaseException:
        executor.cancel([f for s in states for f in s.futures])
        raise
    finally:
        for state in states:
            end_chips(state, written=False)
            end_stream(state)
    return [s.result for s in states]


def run_one(executor: Executor, scene: str | os.PathLike, out: str | os.PathLike, model: SceneModel,
            options: RunOptions, *, overwrite: bool = False, resources: dict | None = None,
            progress: ProgressFactory | None = None) -> SceneResult:
    """One scene, as ``run`` classifies it, on ``executor``: its failure is raised.

    Temporaries that killed writers left in the output's folder are removed
    first (:func:`~jobs.sweep.sweep_leftovers`).  Existing outputs are refused
    before any work unless ``overwrite``, and an output that appears meanwhile
    is not replaced.
    """
    from scenetag.jobs.sweep import sweep_leftovers

    sweep_leftovers(Path(out).parent)  # what a killed run left here (only dead writers' temporaries)
    location = str(scene) if is_remote(scene) else str(Path(scene).resolve())
    record = SceneRecord(redact(location), str(out))
    [result] = run_scenes(executor, [record], model, options, overwrite=overwrite, resources=resources,
                          progress=progress, raise_scene_errors=True, locations=[location])
    return result


def run_scene(
    scene: str,
    out: str,
    predictor: Any,
    options: RunOptions = RunOptions(),
    *,
    overwrite: bool = False,
    progress: ProgressFactory | None = None,
) -> SceneResult:
    """Classify one scene in this process and write its outputs (the path of ``scenetag run``).

    :func:`run_one` on an :class:`~jobs.executors.InProcessExecutor`, with the predictor loaded here.
    """
    from scenetag.jobs.executors import InProcessExecutor
    from scenetag.jobs.models import LocalModel

    with InProcessExecutor() as executor:
        return run_one(executor, scene, out, LocalModel(predictor), options, overwrite=overwrite,
                       progress=progress)
