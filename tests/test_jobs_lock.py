"""The output folder's lock."""

from __future__ import annotations

import json
import multiprocessing
import os

import pytest

from scenetag.errors import LockedError
from scenetag.jobs.lock import LOCK_NAME, OutputLock


def test_lock_refuses_a_second_holder_with_exit_code_3(tmp_path):
    with OutputLock(tmp_path) as first:
        assert first.held
        holder = json.loads((tmp_path / LOCK_NAME).read_text())
        assert holder["pid"] == os.getpid()
        with pytest.raises(LockedError, match=r"in use by another batch run \(pid \d+") as err:
            OutputLock(tmp_path).acquire()
        assert err.value.exit_code == 3
    assert not (tmp_path / LOCK_NAME).exists()
    with OutputLock(tmp_path):  # free again
        pass


def _hold_lock_and_die(folder: str) -> None:
    OutputLock(folder).acquire()
    os._exit(0)  # dies holding it: no release, the file stays


def test_lock_left_by_a_dead_run_is_taken_over(tmp_path, caplog):
    proc = multiprocessing.get_context("spawn").Process(target=_hold_lock_and_die, args=(str(tmp_path),))
    proc.start()
    proc.join(60)
    stale = json.loads((tmp_path / LOCK_NAME).read_text())
    assert stale["pid"] == proc.pid

    with OutputLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert f"left by pid {proc.pid}" in caplog.text
