"""Helpers of the command-line tests: invoking the CLI, and watching real processes through /proc."""

from __future__ import annotations

from click.testing import CliRunner

from cli import main


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def only_files(folder):
    return sorted(p.name for p in folder.iterdir())


def children_of(pid: int) -> list[int]:
    """Live processes whose parent is ``pid`` (from /proc)."""
    found = []
    for status in __import__("pathlib").Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)
        if fields.get("PPid", "").strip() == str(pid) and not fields.get("State", "").startswith("Z"):
            found.append(int(status.parent.name))
    return found


def descendants(pid: int) -> list[int]:
    """``pid``'s live children, theirs, and so on (reader processes are the fork server's children)."""
    found, todo = [], [pid]
    while todo:
        kids = children_of(todo.pop())
        found += kids
        todo += kids
    return found


def alive(pids) -> list[int]:
    """Those of ``pids`` still running (not zombies)."""
    left = []
    for p in pids:
        try:
            if "State:\tZ" not in open(f"/proc/{p}/status").read():
                left.append(p)
        except OSError:
            pass
    return left


def corrupt_copy(src, dst, keep):
    """A copy of ``src`` cut to the first ``keep`` share of its bytes."""
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


def wait_for_readers(proc, timeout: float = 30.0) -> list[int]:
    """Wait until ``proc`` runs reader processes (children of its fork server); returns its process tree.

    A signal sent while the readers start makes a starting child print multiprocessing's own traceback.
    """
    import time

    deadline = time.time() + timeout
    while len(descendants(proc.pid)) <= len(children_of(proc.pid)) and time.time() < deadline:
        time.sleep(0.1)
    tree = descendants(proc.pid)
    assert len(tree) > len(children_of(proc.pid)), "no reader process started"
    return tree
