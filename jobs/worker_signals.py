"""Ctrl-C on a terminal is for this process, not for the LocalCluster's workers.

A terminal sends SIGINT to its whole foreground process group, and the
LocalCluster's worker processes are in it: each would print its own
KeyboardInterrupt traceback while this process is already stopping the job
(or ending ``--dashboard-hold``) and closing the cluster in order.  The
plugin makes every worker of our LocalCluster ignore SIGINT, workers started
later (after one died) included; SIGTERM and SIGKILL still end them, and
their nannies (in this process) still close them.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from distributed import WorkerPlugin


class IgnoreCtrlC(WorkerPlugin):
    """Worker plugin: SIGINT ignored in the worker's process (set from its main thread, where its loop runs)."""

    name = "scenetag-ignore-ctrl-c"

    def setup(self, worker: Any) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)
