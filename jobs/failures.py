"""The failure policy of scene jobs, in one place.

A task of a scene either returns its value, or returns a :class:`SceneFailure`
for an expected per-scene failure (:func:`is_scene_failure`): it comes back
as a value, so Dask does not log it as a crash, and the scene's later tasks
pass it on without running.  The scene job (:mod:`jobs.runner`) retries such
a scene from the start, then records it as failed while the others go on.
Anything else is raised: it is not about one scene, and stops the job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from scenetag.errors import ModelError, ScenetagError


@dataclass(frozen=True)
class SceneFailure:
    """An expected per-scene failure, returned by a task as a value."""

    error: ScenetagError
    stage: str

    def __str__(self) -> str:
        return str(self.error) or type(self.error).__name__


def is_scene_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is about one scene (unreadable, corrupt, bad georeference, unwritable output...).

    Model errors are about every scene, and errors that are not scenetag's are bugs: neither is.
    """
    return isinstance(exc, ScenetagError) and not isinstance(exc, ModelError)


def run_task(stage: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Run one task of a scene under the policy; a failure among ``args`` is passed on without running ``fn``."""
    failed = next((a for a in args if isinstance(a, SceneFailure)), None)
    if failed is not None:
        return failed
    try:
        return fn(*args)
    except ScenetagError as exc:
        if not is_scene_failure(exc):
            raise
        return SceneFailure(exc, stage)
