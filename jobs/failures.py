"""The failure policy of scene jobs, in one place: by inclusion.

A task of a scene either returns its value, or returns a :class:`SceneFailure`
for a failure that is about this one scene (:func:`is_scene_failure`): it
comes back as a value, so Dask does not log it as a crash, and the scene's
later tasks pass it on without running.  The scene job (:mod:`jobs.runner`)
tries such a scene again only when the failure may go away
(:func:`is_retryable`: transient I/O), then records it as failed while the
others go on.

Only the errors named in :data:`PER_SCENE` are per-scene.  Everything else
stops the job loudly: option errors, cluster errors, missing dependencies,
model errors, a full disk (:class:`~scenetag.errors.DiskFullError`: the next
scene would fail the same way), each returned as a :class:`JobFailure` that
the runner raises, and bugs, which are raised where they happen.
"""

from __future__ import annotations

import errno
import sys
from dataclasses import dataclass
from typing import Any, Callable

from scenetag.errors import DiskFullError, OutputError, RemoteSceneError, SceneError, ScenetagError, chain


class WorkerDiedError(SceneError):
    """The process running a scene's task died (out of memory, a crash in a driver), as often as Dask allows."""


#: The errors that are about one scene: the scene cannot be read or used (SceneError: unreadable, corrupt, no
#: georeference, bands that don't fit, over the chip limit, its worker died), or its output cannot be written.
PER_SCENE: tuple[type[ScenetagError], ...] = (SceneError, OutputError)
#: Per-scene by class, but about every scene: they stop the job.
NOT_PER_SCENE: tuple[type[ScenetagError], ...] = (DiskFullError,)
#: OS error numbers of I/O that may succeed when tried again (a network file system's hiccup, a busy file).
TRANSIENT_ERRNOS = frozenset({errno.EIO, errno.EAGAIN, errno.EINTR, errno.EBUSY, errno.ETIMEDOUT, errno.ESTALE,
                              errno.ECONNRESET, errno.ECONNABORTED, errno.EHOSTUNREACH, errno.ENETUNREACH})
#: HTTP statuses of a remote scene that may pass (a timeout, too many requests, the server's trouble).
#: 403 and 404 (and every other 4xx) do not: the same request gets the same answer.
TRANSIENT_HTTP_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
#: Network failures without an HTTP answer that may pass: no answer in time, a refused or dropped
#: connection (a server restarting), a name the resolver could not look up now, a read cut short.
#: Not: a redirect loop, an HTML page, a format GDAL cannot read, a folder, a corrupt block.
TRANSIENT_NETWORK_REASONS = frozenset({"timeout", "refused", "reset", "dns", "network"})


@dataclass(frozen=True)
class SceneFailure:
    """An expected per-scene failure, returned by a task as a value."""

    error: ScenetagError
    stage: str
    #: Whether trying the scene again may succeed (decided where the error and its causes are known).
    retry: bool = False

    def __str__(self) -> str:
        return str(self.error) or type(self.error).__name__


@dataclass(frozen=True)
class JobFailure:
    """An expected error that stops the job (a full disk, a model error...), returned by a task as a value.

    Returned rather than raised so that it reaches the client whole: Dask
    sends a raised error with its chain of causes, and where one of those
    does not travel it delivers a bare ``Exception`` instead, which neither
    the runner nor the CLI can tell apart from a bug.  The runner raises it.
    """

    error: ScenetagError
    stage: str

    def __str__(self) -> str:
        return str(self.error) or type(self.error).__name__


def is_scene_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is about one scene only (:data:`PER_SCENE`, less :data:`NOT_PER_SCENE`)."""
    return isinstance(exc, PER_SCENE) and not isinstance(exc, NOT_PER_SCENE)


def is_retryable(exc: BaseException) -> bool:
    """Whether a per-scene failure may go away when tried again: an OS error of transient I/O caused it.

    A scene without a geotransform, a corrupt file or bands that don't fit fail
    the same way every time.  (A scene whose worker died is tried again by the
    runner: it may have died beside the scene that killed the worker.)

    A remote scene's failure (:class:`~scenetag.errors.RemoteSceneError`) may
    go away by its HTTP status (:data:`TRANSIENT_HTTP_STATUSES`) or, without
    an answer, by its kind (:data:`TRANSIENT_NETWORK_REASONS`); 403 and 404 never.
    """
    for e in chain(exc):
        if isinstance(e, RemoteSceneError):
            if e.status is not None:
                return e.status in TRANSIENT_HTTP_STATUSES
            return e.reason in TRANSIENT_NETWORK_REASONS
        if isinstance(e, OSError) and e.errno in TRANSIENT_ERRNOS:
            return True
    return False


def worker_died(exc: BaseException) -> WorkerDiedError | None:
    """``exc`` as a :class:`WorkerDiedError` when it is Dask's ``KilledWorker``, else None."""
    distributed = sys.modules.get("distributed")  # no Dask loaded: no Dask error either
    if distributed is None or not isinstance(exc, distributed.KilledWorker):
        return None
    worker = getattr(exc.last_worker, "address", exc.last_worker)
    return WorkerDiedError(
        f"its worker died {exc.allowed_failures + 1} times running it (out of memory, or a crash in a "
        f"driver); the last was {worker}: see that worker's log, or give the workers more memory")


def no_worker_left(exc: BaseException, scene: str, stage: str) -> ScenetagError | None:
    """``exc`` as a :class:`~jobs.cluster.ClusterError` when the scheduler failed a task for want of a worker, else None.

    The scheduler does so after ``distributed.scheduler.no-workers-timeout``
    (:data:`~jobs.cluster.NO_WORKERS_TIMEOUT` on our LocalCluster): every
    worker died and none came back, or none has the resources the task asks
    for.  That is about the cluster, not the scene: the job stops.
    """
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return None
    from distributed.scheduler import NoValidWorkerError, NoWorkerError

    from scenetag.jobs.cluster import ClusterError

    if isinstance(exc, NoWorkerError):
        return ClusterError(
            f"the cluster has had no worker for {exc.timeout:g} s, so the {stage} task of {scene} could not "
            "run: its workers died and none came back; see the workers' logs (out of memory, a crash "
            "in a driver), start workers again and run the batch again (finished scenes are skipped)")
    if isinstance(exc, NoValidWorkerError):
        wanted = ", ".join(f"{k}={v:g}" for k, v in exc.resource_restrictions.items()) or "the workers it names"
        return ClusterError(
            f"no worker of the cluster has {wanted}, so the {stage} task of {scene} waited {exc.timeout:g} s "
            "and was failed: start workers with those resources (docs/batch.md: GPU workers), or run "
            "without --gpu")
    return None


def run_task(stage: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Run one task of a scene under the policy; a failure among ``args`` is passed on without running ``fn``.

    Returns ``fn``'s value, a :class:`SceneFailure` or a :class:`JobFailure`;
    errors that are not scenetag's (bugs) are raised, with their traceback.
    """
    failed = next((a for a in args if isinstance(a, (SceneFailure, JobFailure))), None)
    if failed is not None:
        return failed
    try:
        return fn(*args)
    except ScenetagError as exc:
        if not is_scene_failure(exc):
            return JobFailure(exc, stage)
        return SceneFailure(exc, stage, is_retryable(exc))
