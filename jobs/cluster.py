"""Where the work runs: a LocalCluster by default, or an existing Dask cluster.

The scheduler address is chosen as dask chooses configuration: an explicit
argument first, then the environment variable :data:`SCHEDULER_ENV`, then the
default, which is a LocalCluster on this machine.  The value ``local`` asks
for the LocalCluster even where the environment names a scheduler.

Workers of an existing cluster must have scenetag installed and must see the
scenes and the output folder at the same paths as the client (a shared file
system), since they read the scenes and write the GeoPackages themselves.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from scenetag.errors import ScenetagError

log = logging.getLogger(__name__)

#: Environment variable naming the scheduler of an existing cluster.
SCHEDULER_ENV = "SCENETAG_SCHEDULER"
#: The value of ``--scheduler`` (or the variable) that asks for a LocalCluster.
LOCAL = "local"
#: Where the LocalCluster's dashboard listens; another free port is taken if it is in use.
DEFAULT_DASHBOARD = "127.0.0.1:8787"
#: Chips per classify task: a scene with more is split into strips of chip rows
#: (here, not in :mod:`jobs.batch`, so that the CLI reads it without importing Dask).
DEFAULT_CHIPS_PER_TASK = 256
#: Chips per classify task where the tasks go to GPU workers: a task fills the reader pipeline and
#: drains the GPU with the readers idle, and 256 chips are about 20 ms of an H200's work, so small
#: tasks leave the GPU waiting and make the scheduler the limit (docs/scale.md, docs/batch.md).
GPU_CHIPS_PER_TASK = 16384
#: How long the LocalCluster's scheduler keeps tasks waiting while it has no worker that can run them
#: (every worker died and none came back, or none has the resources asked for) before it fails them,
#: and the batch stops with a :class:`ClusterError` instead of waiting for ever.  A worker restarts
#: in seconds (a GPU worker's CUDA start-up in tens); a cluster that is not ours keeps its own
#: ``distributed.scheduler.no-workers-timeout`` (docs/batch.md).
NO_WORKERS_TIMEOUT = "300s"


def chips_per_task_for(resources: dict | None, chips_per_task: int | None = None) -> int:
    """``chips_per_task`` if given, else the default for where the classify tasks go (GPU workers or not)."""
    if chips_per_task:
        return int(chips_per_task)
    return GPU_CHIPS_PER_TASK if resources and resources.get("GPU") else DEFAULT_CHIPS_PER_TASK


class ClusterError(ScenetagError, ConnectionError):
    """The Dask scheduler cannot be reached or the cluster cannot start."""


def resolve_scheduler(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    """The scheduler address to use, or None for a LocalCluster (argument > environment > default)."""
    environ = os.environ if environ is None else environ
    value = explicit if explicit else environ.get(SCHEDULER_ENV, "").strip() or None
    if value is None or value.lower() == LOCAL:
        return None
    if "://" not in value:
        value = f"tcp://{value}"
    return value


def local_gpu_count() -> int:
    """NVIDIA GPUs this machine shows (respecting ``CUDA_VISIBLE_DEVICES``), without importing CUDA."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([v for v in visible.split(",") if v.strip() and v.strip() != "-1"])
    gpus = Path("/proc/driver/nvidia/gpus")
    return len(list(gpus.iterdir())) if gpus.is_dir() else 0


@dataclass(frozen=True)
class ClusterInfo:
    """What the job tells the user about the cluster it runs on."""

    scheduler: str
    dashboard: str | None
    local: bool
    n_workers: int
    n_threads: int
    gpu_workers: int


def describe(client) -> ClusterInfo:
    """Workers, threads and GPU resources of the cluster behind ``client``."""
    info = client.scheduler_info(n_workers=-1) if _takes_n_workers(client) else client.scheduler_info()
    workers = info.get("workers", {})
    return ClusterInfo(
        scheduler=client.scheduler.address,
        dashboard=_dashboard(client),
        local=client.cluster is not None,
        n_workers=len(workers),
        n_threads=sum(w.get("nthreads", 0) for w in workers.values()),
        gpu_workers=sum(1 for w in workers.values() if w.get("resources", {}).get("GPU", 0) > 0),
    )


def thread_reader_workers(client) -> int:
    """How many workers of ``client``'s cluster may not start reader processes (daemonic: Dask's default)."""
    from scenetag.jobs.classify import can_start_readers

    try:
        answers = client.run(can_start_readers, on_error="return")
    except Exception as exc:  # noqa: BLE001 - a worker that cannot answer is counted as one that may
        log.debug("could not ask the workers whether they may start reader processes: %s", exc)
        return 0
    return sum(1 for may in answers.values() if may is False)


def warn_thread_readers(client, info: ClusterInfo, reader: str, device: str,
                        resources: dict | None) -> str | None:
    """Say once, when the batch starts, that workers will read with threads where processes were meant.

    Processes are meant with ``--reader processes``, and with ``auto`` when
    the classify tasks go to GPU workers with a model not on the CPU; only
    then are the workers asked.  Returns the warning (None when there is nothing to say).
    """
    from scenetag.jobs.classify import NON_DAEMONIC_HINT, THREADS_COST

    reader = getattr(reader, "value", reader)
    meant = reader == "processes" or (reader == "auto" and bool(resources) and device != "cpu")
    n = thread_reader_workers(client) if meant else 0
    if not n:
        return None
    message = (f"{n} of the {info.n_workers} Dask workers at {info.scheduler} are "
               f"daemonic processes (Dask's default) and may not start reader processes: they read with "
               f"threads, and {THREADS_COST}; {NON_DAEMONIC_HINT}")
    log.warning("%s", message)
    return message


def _takes_n_workers(client) -> bool:
    import inspect

    return "n_workers" in inspect.signature(client.scheduler_info).parameters


def _dashboard(client) -> str | None:
    try:
        return client.dashboard_link
    except Exception:  # noqa: BLE001 - no dashboard (bokeh missing) is not an error
        return None


@contextlib.contextmanager
def connect(
    scheduler: str | None = None,
    *,
    workers: int | None = None,
    threads: int | None = None,
    gpu: bool = False,
    dashboard_address: str | None = DEFAULT_DASHBOARD,
    timeout: float = 30.0,
    announce: Callable[[ClusterInfo], None] | None = None,
) -> Iterator[tuple[Any, ClusterInfo]]:
    """``(client, info)``: a :class:`distributed.Client` on the chosen cluster and its
    :class:`ClusterInfo`; the client (and a LocalCluster) is closed on exit.

    Args:
        scheduler: ``tcp://HOST:PORT`` of an existing scheduler, ``local``, or
            None for :data:`SCHEDULER_ENV` and then a LocalCluster.
        workers: LocalCluster worker processes (default: one per CPU core).
        threads: Threads per LocalCluster worker (default 1: tasks run side by side
            in processes and ONNX Runtime uses one thread per task).
        gpu: Give each LocalCluster worker the resource ``GPU=1``.
        dashboard_address: Where the LocalCluster's dashboard listens; None for none.
        timeout: Seconds to wait for an existing scheduler.
        announce: Called with the :class:`ClusterInfo` once connected (the CLI
            prints the dashboard link with it; library code prints nothing).
    """
    address = resolve_scheduler(scheduler)
    with contextlib.ExitStack() as stack:
        if address is None:  # the dashboard's web server runs in this process
            stack.enter_context(dashboard_noise_filtered())
            stack.enter_context(local_cluster_settings())
        yield from _connected(address, workers, threads, gpu, dashboard_address, timeout, announce)


@contextlib.contextmanager
def local_cluster_settings() -> Iterator[None]:
    """Within the block, a LocalCluster made in this process keeps its workers through crashes, and says when none is left.

    Set for the LocalCluster's whole life, as each is read when it applies:

    * ``distributed.worker.daemon`` False, read by a nanny each time it starts
      its worker (also after a worker died): non-daemonic workers may start
      reader processes.  A worker still dies with its nanny (distributed's own
      pipe), and its readers with it (:func:`scenetag.tiler.reader_process.die_with_owner`).
    * ``distributed.deploy.lost-worker-timeout`` off: a LocalCluster closes
      the nanny of any worker that is missing from the scheduler 15 s after
      it was removed, even one its nanny restarted and that happens to be down
      again at that moment (a scene that kills every worker that runs it, tried
      again).  Those nannies were lost for good, until no worker was left and
      the batch waited for ever.  Our nannies restart their own workers.
    * ``distributed.scheduler.no-workers-timeout`` :data:`NO_WORKERS_TIMEOUT`,
      read when the scheduler starts: if no worker is left anyway, the waiting
      tasks fail and the batch stops with a :class:`ClusterError` that says so.
    """
    import dask
    import distributed  # noqa: F401 - its defaults first: leaving the block drops keys it added

    with dask.config.set({"distributed.worker.daemon": False,
                          "distributed.deploy.lost-worker-timeout": "3650 days",
                          "distributed.scheduler.no-workers-timeout": NO_WORKERS_TIMEOUT}):
        yield


def _connected(address: str | None, workers: int | None, threads: int | None, gpu: bool,
               dashboard_address: str | None, timeout: float,
               announce: Callable[[ClusterInfo], None] | None) -> Iterator[tuple[Any, ClusterInfo]]:
    """The body of :func:`connect` (a generator yielding once): start or reach the cluster, then close it."""
    from distributed import Client, LocalCluster

    cluster = None
    try:
        if address is None:
            n_workers = workers or os.cpu_count() or 1
            kwargs: dict = {"n_workers": n_workers, "threads_per_worker": threads or 1,
                            "processes": True}
            if dashboard_address is None:
                kwargs["scheduler_kwargs"] = {"dashboard": False}
            else:
                kwargs["dashboard_address"] = dashboard_address
            if gpu:
                kwargs["resources"] = {"GPU": 1}
            cluster = LocalCluster(**kwargs)
            client = Client(cluster)
            from scenetag.jobs.worker_signals import IgnoreCtrlC

            client.register_plugin(IgnoreCtrlC(), name=IgnoreCtrlC.name)  # the terminal's Ctrl-C is ours
        else:
            if workers or threads:
                log.warning("--workers and --threads size a LocalCluster; the cluster at %s keeps its own",
                            address)
            client = Client(address, timeout=timeout)
    except (OSError, ValueError) as exc:  # OSError includes TimeoutError; ValueError: an address Dask can't parse
        if cluster is not None:
            cluster.close()
        where = address or "a LocalCluster"
        raise ClusterError(
            f"could not start or reach {where} ({exc}): check the address given by --scheduler "
            f"or {SCHEDULER_ENV}, and that the scheduler is running"
        ) from exc
    try:
        info = describe(client)
        log.info("Dask scheduler %s: %d workers, %d threads%s; dashboard %s", info.scheduler,
                 info.n_workers, info.n_threads,
                 f", {info.gpu_workers} with a GPU" if info.gpu_workers else "", info.dashboard)
        if announce is not None:
            announce(info)
        yield client, info
    finally:
        close(client, cluster)


#: What a worker logs when a heartbeat in flight loses its connection at shutdown (distributed.worker).
HEARTBEAT_NOISE = "Failed to communicate with scheduler during heartbeat"
#: Seconds a worker waits at shutdown for a heartbeat in flight to be answered.
HEARTBEAT_DRAIN_S = 5.0


class _DropMessage(logging.Filter):
    """Drops the records whose message starts with ``prefix`` (or whose exception is of ``exc_type``, by name)."""

    def __init__(self, prefix: str | None = None, exc_type: str | None = None) -> None:
        super().__init__()
        self.prefix, self.exc_type = prefix, exc_type

    def filter(self, record: logging.LogRecord) -> bool:
        if self.prefix is not None and str(record.msg).startswith(self.prefix):
            return False
        exc = record.exc_info[1] if record.exc_info else None
        return not (self.exc_type is not None and exc is not None and type(exc).__name__ == self.exc_type)


#: What the LocalCluster's dashboard logs that says nothing to a user, logger by logger:
#: bokeh's warning about the origin wildcard (the dashboard listens on 127.0.0.1 by
#: default, and distributed sets the wildcard), and what a browser closing the page
#: mid-run makes the server log as it writes the next update to the closed socket
#: (a warning in bokeh 3.x, tracebacks of WebSocketClosedError by tornado and asyncio).
DASHBOARD_NOISE: tuple[tuple[str, _DropMessage], ...] = (
    ("bokeh.server.util", _DropMessage(prefix="Host wildcard")),
    ("bokeh.server.views.ws", _DropMessage(prefix="Failed sending message as connection was closed")),
    ("bokeh.server.views.ws", _DropMessage(exc_type="WebSocketClosedError")),
    ("tornado.application", _DropMessage(exc_type="WebSocketClosedError")),
    ("asyncio", _DropMessage(exc_type="WebSocketClosedError")),
)


@contextlib.contextmanager
def dashboard_noise_filtered() -> Iterator[None]:
    """Within the block, the :data:`DASHBOARD_NOISE` records are dropped (each on its logger, nothing else)."""
    for name, flt in DASHBOARD_NOISE:
        logging.getLogger(name).addFilter(flt)
    try:
        yield
    finally:
        for name, flt in DASHBOARD_NOISE:
            logging.getLogger(name).removeFilter(flt)


async def _stop_heartbeat(dask_worker, drain_s: float = HEARTBEAT_DRAIN_S) -> bool:
    """On a worker about to be closed: stop its heartbeat, and wait for one in flight to be answered.

    Worker.close stops the heartbeat's PeriodicCallback but not a heartbeat
    already waiting for the scheduler, then closes its connections: that
    heartbeat fails and logs a traceback (``HEARTBEAT_NOISE``) on a shutdown
    that went well.  The busier the scheduler, the longer a heartbeat waits and
    the likelier this is (so long, loaded batches met it).  Stopped here first
    and drained, no heartbeat is left to fail.  Returns whether the drain ended
    in time; the message is filtered in this (ending) worker process anyway.
    """
    import asyncio
    import time

    logging.getLogger("distributed.worker").addFilter(_DropMessage(HEARTBEAT_NOISE))
    heartbeat = dask_worker.periodic_callbacks.get("heartbeat")
    if heartbeat is not None:
        heartbeat.stop()
    pool, address = dask_worker.rpc, dask_worker.scheduler.addr
    deadline = time.monotonic() + drain_s
    while pool.occupied.get(address) or getattr(pool, "_n_connecting", 0):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


#: A worker process that takes longer than distributed's 4 s to exit when the cluster closes (a loaded
#: machine: its interpreter's teardown) is killed by its nanny, which says so; the batch is over by then.
_SLOW_EXIT = _DropMessage(prefix="Worker process still alive after")


def close(client, cluster=None) -> None:
    """Close ``client``, and the LocalCluster ``cluster`` (when it is ours) after it, quietly.

    The order: the workers' heartbeats are stopped and drained first
    (:func:`_stop_heartbeat`), then the client (its own heartbeat and other
    periodic callbacks stop with it), then the cluster (workers, then the
    scheduler).  Workers of a cluster that is not ours are left alone.  While
    the cluster closes, the nanny's note that it killed a worker slow to exit
    is dropped (:data:`_SLOW_EXIT`): every result is in by then.
    """
    import time

    t0 = time.perf_counter()
    if cluster is not None:
        try:
            drained = client.run(_stop_heartbeat, on_error="ignore")
            log.debug("worker heartbeats stopped (drained: %s) in %.2f s", drained, time.perf_counter() - t0)
        except Exception as exc:  # noqa: BLE001 - a worker already gone: closing goes on regardless
            log.debug("could not stop the workers' heartbeats before closing: %s", exc)
    client.close()
    log.debug("client closed at %.2f s", time.perf_counter() - t0)
    if cluster is not None:
        nanny = logging.getLogger("distributed.nanny")
        nanny.addFilter(_SLOW_EXIT)  # only while our own cluster closes, after every result is in
        try:
            cluster.close()
        finally:
            nanny.removeFilter(_SLOW_EXIT)
        log.debug("cluster closed at %.2f s", time.perf_counter() - t0)


def gpu_resources(info: ClusterInfo, gpu: bool | None) -> dict | None:
    """``{"GPU": 1}`` when inference tasks should ask for a GPU: ``gpu`` True, or None and workers have one."""
    if gpu is False:
        return None
    if info.gpu_workers:
        return {"GPU": 1}
    if gpu:
        raise ClusterError(
            f"--gpu asks for GPU workers, but none of the {info.n_workers} workers at {info.scheduler} "
            "declares a GPU: start them with `dask worker SCHEDULER --resources GPU=1`"
        )
    return None
