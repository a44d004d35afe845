"""Chip progress of scene jobs: from wherever their tasks run to the process that shows it.

Classify tasks count chips as they go (the ``progress`` callback of
:func:`~jobs.classify.classify_cells`).  In this process the count goes
straight to the callback (``run``'s bar).  On a Dask cluster a task's counts
travel as events: the task's :class:`ChipEvents` publishes them on
:data:`TOPIC` with ``Worker.log_event`` (throttled to about two a second per
task, and flushed at the task's end), the scheduler forwards them to the
client that subscribed (``Client.subscribe_topic``), and
:class:`~jobs.executors.DaskExecutor` hands each to the callback of its scene.
These are Dask's own pub-sub messages, batched with the worker's other
traffic: no extra connection, no polling.

:class:`BatchProgress` adds up the scenes of a batch: chips done and planned,
scenes done, and the rate.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

#: The event topic of chip counts (one for every scenetag client: the scheduler keeps a bounded log per topic).
TOPIC = "scenetag-chips"
#: Seconds between two events of one task: frequent enough for a bar, few enough to cost nothing.
EVENT_INTERVAL = 0.5

Progress = Callable[[int], None]


class ChipEvents:
    """A classify task's progress callback on a Dask worker: chip counts sent to the client as events.

    Pickled into the task with only its topic and token; outside a worker
    (no Dask worker in this process) the counts are dropped.
    """

    def __init__(self, topic: str, token: str) -> None:
        self.topic, self.token = topic, token
        self._pending = 0
        self._last = 0.0

    def __getstate__(self) -> dict:
        return {"topic": self.topic, "token": self.token}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["topic"], state["token"])

    def __call__(self, n: int) -> None:
        self._pending += n
        if time.monotonic() - self._last >= EVENT_INTERVAL:
            self.flush()

    def flush(self) -> None:
        """Send what was counted since the last event (the task calls it when it ends)."""
        if not self._pending:
            return
        try:
            from distributed import get_worker

            worker = get_worker()
        except (ImportError, ValueError):  # not on a worker
            self._pending = 0
            return
        worker.log_event(self.topic, {"token": self.token, "n": self._pending})
        self._pending = 0
        self._last = time.monotonic()


class SceneChips:
    """One try of one scene's chips: passes counts on to ``update``, never past ``total``, and ends cleanly.

    Counts can arrive after the scene is over (events travel on their own),
    so :meth:`complete` (the scene is written: all its chips are done) and
    :meth:`stop` (the try failed) make later counts change nothing.
    """

    def __init__(self, update: Progress, total: int) -> None:
        self._update, self.total = update, total
        self.done = 0
        self._open = True
        self._lock = threading.Lock()

    def __call__(self, n: int) -> None:
        with self._lock:
            n = min(n, self.total - self.done) if self._open else 0
            self.done += max(n, 0)
        if n > 0:
            self._update(n)

    def complete(self) -> None:
        """Every chip is done: count the rest (events still on their way), then stop."""
        self(self.total - self.done)
        self.stop()

    def stop(self) -> None:
        with self._lock:
            self._open = False


@dataclass(frozen=True)
class Snapshot:
    """The batch's progress at one moment."""

    scenes_done: int
    scenes_total: int
    scenes_planned: int
    chips_done: int
    chips_planned: int
    #: Since the batch started.
    seconds: float
    #: Since the first chip was counted (the cluster's start-up is not classification).
    seconds_classifying: float

    @property
    def chips_per_second(self) -> float:
        return self.chips_done / self.seconds_classifying if self.seconds_classifying > 0 else 0.0

    def line(self) -> str:
        """``"2/5 scenes, 1,204/3,310 chips (3 of 5 scenes planned), 41.3 chips/s, 29 s"``."""
        planned = "" if self.scenes_planned >= self.scenes_total else \
            f" ({self.scenes_planned} of {self.scenes_total} scenes planned)"
        return (f"{self.scenes_done}/{self.scenes_total} scenes, {self.chips_done:,}/{self.chips_planned:,} chips"
                f"{planned}, {self.chips_per_second:.1f} chips/s, {self.seconds:.0f} s")


class BatchProgress:
    """Counts of a batch, fed by the job: :meth:`start`, :meth:`scene` (a factory, per planned scene), :meth:`done`.

    ``on_change`` is called (from any thread: chip events arrive on the Dask
    client's thread) with ``(snapshot, chips just counted)`` after each change.
    A scene tried again counts its chips again: the counts are work done, and
    the rate stays true.
    """

    def __init__(self, on_change: Callable[[Snapshot, int], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._on_change = on_change
        self._clock = clock
        self._lock = threading.Lock()
        self._t0 = clock()
        self._t_first: float | None = None
        self.scenes_total = self.scenes_done = self.scenes_planned = 0
        self.chips_done = self.chips_planned = 0

    def start(self, n_scenes: int) -> None:
        with self._lock:
            self._t0 = self._clock()
            self.scenes_total = n_scenes
        self._changed(0)

    def scene(self, total: int) -> Progress:
        """A scene's try is planned with ``total`` chips: the callback that counts them (a ``ProgressFactory``)."""
        with self._lock:
            self.scenes_planned += 1  # a scene tried again counts twice: the snapshot clips it
            self.chips_planned += total

        def update(n: int) -> None:
            with self._lock:
                if self._t_first is None:
                    self._t_first = self._clock()
                self.chips_done += n
            self._changed(n)

        self._changed(0)
        return update

    def done(self, planned: bool) -> None:
        """A scene is finished (``planned``: it was planned, so its chips were counted; a skipped one was not)."""
        with self._lock:
            self.scenes_done += 1
            if not planned:
                self.scenes_planned += 1
        self._changed(0)

    def snapshot(self) -> Snapshot:
        with self._lock:
            now = self._clock()
            return Snapshot(self.scenes_done, self.scenes_total, min(self.scenes_planned, self.scenes_total),
                            self.chips_done, self.chips_planned, now - self._t0,
                            0.0 if self._t_first is None else now - self._t_first)

    def _changed(self, n: int) -> None:
        if self._on_change is not None:
            self._on_change(self.snapshot(), n)
