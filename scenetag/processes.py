"""Facts about processes on this machine, for telling live owners from dead ones, and work at a process's exit."""

from __future__ import annotations

import multiprocessing.util as mp_util
import os
import threading
from typing import Callable

#: The functions :func:`at_exit` registered, and the process that registered each.
_at_exit: dict[Callable[[], None], int] = {}
_at_exit_lock = threading.Lock()


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists here (one of another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def at_exit(fn: Callable[[], None], priority: int = 0) -> None:
    """Call ``fn`` when this process exits, once: at a program's normal exit, and in a multiprocessing child.

    Not :mod:`atexit`: a multiprocessing child (a Dask worker under its nanny)
    ends with ``os._exit`` after multiprocessing's own finalizers, which also
    run at a main program's exit, before the interpreter finalises.  Those
    with a higher ``priority`` run first.  Call it when the thing to clean up
    is made, not at import: a spawned child imports modules before
    multiprocessing clears the finalizers it inherited, so a child registers
    again on its first use.
    """
    pid = os.getpid()
    with _at_exit_lock:
        if _at_exit.get(fn) == pid:
            return
        _at_exit[fn] = pid
        mp_util.Finalize(None, fn, exitpriority=priority)
