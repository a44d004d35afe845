"""A lock on an output folder, so that two batch runs never write into it at once.

The lock is the file :data:`LOCK_NAME` in the folder, held with ``flock``.
The kernel drops an ``flock`` when its process dies, however it dies, so a
lock file left by a killed run is not held and the next run simply takes it
over: no PID guessing, and no trouble when a PID is reused.  The file also
records who holds it (host, PID, start time, command line) for the message
that a refused run prints.

``flock`` is advisory and local to one kernel, or to NFS servers that support
it (NFSv4 does).  Run cron jobs for one output folder from one host.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType

from scenetag.errors import LockedError, OutputError
from scenetag.processes import pid_alive

log = logging.getLogger(__name__)

LOCK_NAME = ".scenetag-batch.lock"


def _holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


class OutputLock:
    """Hold :data:`LOCK_NAME` in ``folder`` while in the ``with`` block.

    Raises :class:`~scenetag.errors.LockedError` (exit code 3) when another
    process holds it.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "OutputLock":
        """Take the lock, or raise :class:`LockedError` naming its holder."""
        if not self.folder.is_dir():
            raise OutputError(f"output folder {str(self.folder)!r} does not exist: create it first")
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise OutputError(f"cannot create the lock {str(self.path)!r}: {exc}") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise LockedError(self._locked_message()) from None
            # The holder before us may have unlinked the file between our open and
            # our flock: then we hold a lock on a file nobody else will see.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _holder(self.path)
        if previous.get("pid"):
            log.warning("taking over the lock %s left by pid %s on %s since %s (that run did not finish)",
                        self.path, previous.get("pid"), previous.get("host"), previous.get("started_at"))
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "argv": sys.argv}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        os.fsync(fd)
        self._fd = fd
        log.debug("locked %s", self.path)
        return self

    def _locked_message(self) -> str:
        h = _holder(self.path)
        who = f"pid {h.get('pid', '?')} on {h.get('host', '?')} since {h.get('started_at', '?')}"
        if h.get("host") == socket.gethostname() and h.get("pid") and not pid_alive(int(h["pid"])):
            who += " (that process is gone; its lock is held by a child it left running)"
        return (f"output folder {str(self.folder)!r} is in use by another batch run ({who}): "
                f"wait for it to finish, or use another --out-dir. Lock file: {str(self.path)!r}")

    def release(self) -> None:
        """Remove the lock file and let go of the lock."""
        if self._fd is None:
            return
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None
        log.debug("unlocked %s", self.path)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
