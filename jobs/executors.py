"""Where a scene job's tasks run: in this process, or on a Dask cluster.

The scene job (:mod:`jobs.runner`) is written once against :class:`Executor`;
``run`` uses :class:`InProcessExecutor`, ``batch`` and ``run --scheduler``
use :class:`DaskExecutor`.  An executor submits a task (a function and its
arguments, where an argument may be the future of another task, resolved
before the task runs), says when tasks finish, and cancels them.  It also
says how a scene is cut into tasks (:attr:`Executor.chips_per_task`) and
relays the tasks' chip counts back to this process (:meth:`Executor.relay`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterator, Protocol, Sequence

#: Chips per classify task on a cluster: a scene with more is split into strips of chip rows.
#: (The value lives in jobs.cluster so the CLI reads it without importing Dask.)
from scenetag.jobs.cluster import DEFAULT_CHIPS_PER_TASK
from scenetag.jobs.progress import TOPIC, ChipEvents, Progress

log = logging.getLogger(__name__)

#: Seconds a cluster may have no worker while tasks wait before the batch says so (again every
#: :data:`NO_WORKERS_REPEAT_S`): the scheduler of a cluster that is not ours waits for workers to
#: join unless it has a no-workers-timeout (our LocalCluster's fails the tasks, jobs.cluster).
NO_WORKERS_WARN_S = 60.0
NO_WORKERS_REPEAT_S = 600.0
#: Seconds between looks at the cluster's workers while tasks wait.
NO_WORKERS_POLL_S = 5.0


class Executor(Protocol):
    """Runs the tasks of scene jobs."""

    #: Chips per classify task; None: a scene is one task (its readers and batches stay together).
    chips_per_task: int | None
    #: Whether tasks run in this process and may share its objects (a scene's streamed write).
    shares_objects: bool

    def submit(self, stage: str, fn: Callable[..., Any], *args: Any,
               resources: dict | None = None, side: bool = False) -> Any:
        """Start ``fn(*args)``; futures among ``args`` are replaced by their results first.

        ``resources`` (e.g. ``{"GPU": 1}``) restricts where it runs on a cluster;
        ``side`` marks a task that may run beside the others (it takes no futures).
        """
        ...

    def watch(self, future: Any) -> None:
        """Report ``future`` from :meth:`completed` when it is done."""
        ...

    def completed(self) -> Iterator[Any]:
        """The watched futures as they finish, including ones watched meanwhile; ends when none is left."""
        ...

    def cancel(self, futures: Sequence[Any]) -> None:
        """Cancel tasks that have not finished (their results are no longer wanted)."""
        ...

    def relay(self, callback: Progress) -> Progress:
        """A progress callback for tasks (it goes into their arguments) that calls ``callback`` here."""
        ...

    def unrelay(self, relayed: Progress) -> None:
        """Stop relaying what :meth:`relay` returned (counts still on their way are dropped)."""
        ...


class InProcessExecutor:
    """Tasks in this process: each runs on the calling thread, inside :meth:`completed`, once its inputs are done.

    Running them on the caller's thread keeps Ctrl-C and SIGTERM where they
    belong: they interrupt the classification at once, and its readers are
    cleaned up on the way out.  A ``side`` task (the scene checksum) runs on
    a thread of its own instead, beside the others.
    """

    chips_per_task: int | None = None
    shares_objects = True

    def __init__(self) -> None:
        self._side = ThreadPoolExecutor(1, thread_name_prefix="scene-side")
        self._tasks: deque[tuple[Future, Callable[..., Any], tuple]] = deque()
        self._finished: queue.SimpleQueue[Future] = queue.SimpleQueue()
        self._watched: set[Future] = set()

    def submit(self, stage: str, fn: Callable[..., Any], *args: Any, resources: dict | None = None,
               side: bool = False) -> Future:
        if side:
            if any(isinstance(a, Future) for a in args):
                raise ValueError(f"a side task ({stage}) takes no futures")
            fut = self._side.submit(fn, *args)
            fut.add_done_callback(self._finished.put)  # wakes completed() when only side tasks run
        else:
            fut = Future()
            self._tasks.append((fut, fn, args))
        return fut

    def watch(self, future: Future) -> None:
        self._watched.add(future)

    def completed(self) -> Iterator[Future]:
        while self._watched:
            done = [f for f in self._watched if f.done()]
            for fut in done:
                self._watched.discard(fut)
                yield fut
            if done:
                continue
            task = self._runnable()
            if task is not None:
                self._run(*task)
            else:  # only side tasks are running: wait for one
                self._finished.get()

    def _runnable(self) -> tuple | None:
        for task in self._tasks:
            if all(a.done() for a in task[2] if isinstance(a, Future)):
                self._tasks.remove(task)
                return task
        return None

    @staticmethod
    def _run(fut: Future, fn: Callable[..., Any], args: tuple) -> None:
        if not fut.set_running_or_notify_cancel():
            return
        try:
            values = [a.result() if isinstance(a, Future) else a for a in args]
        except BaseException as exc:  # an input failed or was cancelled: this task fails with it
            fut.set_exception(exc)
            return
        try:
            fut.set_result(fn(*values))
        except Exception as exc:
            fut.set_exception(exc)

    def cancel(self, futures: Sequence[Future]) -> None:
        for fut in futures:
            fut.cancel()

    def relay(self, callback: Progress) -> Progress:
        return callback  # the tasks run here

    def unrelay(self, relayed: Progress) -> None:
        pass

    def close(self) -> None:
        self._tasks.clear()
        self._side.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> "InProcessExecutor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def task_key(stage: str) -> str:
    """A new task key whose dashboard name (Dask's ``key_split`` prefix) is ``scenetag_<stage>``.

    ``key_split`` keeps the words of a key up to the first one that looks like a
    number or a hash, and an 8-letter word starting with a-f counts as hex: in
    ``scenetag-classify-<id>`` the word ``classify`` does, so every classify task
    showed as ``scenetag``.  Joined by ``_``, the name is one word; the id after
    the ``-`` always holds a digit (a uuid4's version nibble is 4), so it is cut.
    """
    return f"scenetag_{stage}-{uuid.uuid4().hex}"


class DaskExecutor:
    """Tasks on a Dask cluster through ``client``; a scene's chips are split into strips.

    Every submission gets a key of its own (tasks read and write files, so
    they are not pure), named by :func:`task_key` so the dashboard shows the
    stages apart.
    """

    shares_objects = False

    def __init__(self, client: Any, chips_per_task: int = DEFAULT_CHIPS_PER_TASK) -> None:
        from distributed import as_completed

        self.client = client
        self.chips_per_task = chips_per_task
        self._relayed: dict[str, Progress] = {}
        self._subscribed = False
        # Bound to this client's loop: by default it takes the default client's (dask/distributed#4317).
        self._pending = as_completed(loop=client.loop)

    def submit(self, stage: str, fn: Callable[..., Any], *args: Any, resources: dict | None = None,
               side: bool = False) -> Any:
        return self.client.submit(fn, *args, key=task_key(stage), resources=resources, pure=False)

    def watch(self, future: Any) -> None:
        self._pending.add(future)

    def completed(self) -> Iterator[Any]:
        stop = threading.Event()
        watcher = threading.Thread(target=self._watch_workers, args=(stop,), name="scenetag-workers", daemon=True)
        watcher.start()
        try:
            yield from self._pending
        finally:
            stop.set()
            watcher.join()

    def _watch_workers(self, stop: threading.Event) -> None:
        """Say in the log when the cluster has had no worker for a while: the batch is waiting, not working."""
        since = warned = None
        while not stop.wait(NO_WORKERS_POLL_S):
            try:
                # A count, not the workers' details (scheduler_info fetches every worker's).
                n = self.client.sync(self.client.scheduler.identity, n_workers=0, callback_timeout=30)["n_workers"]
            except Exception:  # noqa: BLE001 - the client is closing: nothing to say
                return
            now = time.monotonic()
            if n:
                if warned is not None:
                    log.warning("the cluster at %s has %d workers again; the batch goes on", self._address(), n)
                since = warned = None
                continue
            since = now if since is None else since
            if now - since >= NO_WORKERS_WARN_S and (warned is None or now - warned >= NO_WORKERS_REPEAT_S):
                warned = now
                log.warning(
                    "the cluster at %s has had no worker for %.0f s: the batch waits for workers to join "
                    "(start some, or stop it; a scheduler started with "
                    "DASK_DISTRIBUTED__SCHEDULER__NO_WORKERS_TIMEOUT=300s fails the batch instead)",
                    self._address(), now - since)

    def _address(self) -> str:
        return str(getattr(self.client.scheduler, "address", "") or "?")

    def cancel(self, futures: Sequence[Any]) -> None:
        if futures:
            self.client.cancel(list(futures))

    def relay(self, callback: Progress) -> ChipEvents:
        """Tasks' counts come back as events (:mod:`jobs.progress`); ``callback`` runs on the client's thread."""
        if not self._subscribed:
            # Sent before any task that uses it, on the same stream: the scheduler knows it first.
            self.client.subscribe_topic(TOPIC, self._on_event)
            self._subscribed = True
        token = uuid.uuid4().hex
        self._relayed[token] = callback
        return ChipEvents(TOPIC, token)

    def unrelay(self, relayed: Progress) -> None:
        self._relayed.pop(getattr(relayed, "token", None), None)

    def _on_event(self, event: tuple[float, Any]) -> None:
        _, msg = event
        if isinstance(msg, dict):  # another client's, or a scene already over: no callback
            callback = self._relayed.get(msg.get("token"))
            if callback is not None:
                callback(int(msg.get("n", 0)))

    def close(self) -> None:
        """Stop listening for chip events (before the client closes)."""
        if self._subscribed:
            self._subscribed = False
            self._relayed.clear()
            try:
                self.client.unsubscribe_topic(TOPIC)
            except Exception:  # noqa: BLE001 - the client is already closed: nothing listens any more
                pass
