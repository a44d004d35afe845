"""``atomic_path``: the final rename never replaces a file it was not asked to replace."""

from __future__ import annotations

import errno
import os
import threading

import pytest

import scenetag.atomic as atomic
from scenetag.atomic import TMP_GLOB, atomic_path
from scenetag.errors import OutputError, OutputExistsError


@pytest.fixture(params=["renameat2", "link"])
def final_step(request, monkeypatch):
    """Each way of renaming without replacing: renameat2 where libc has it, and the hard-link fallback."""
    if request.param == "renameat2" and atomic._RENAMEAT2 is None:
        pytest.skip("this libc has no renameat2")
    if request.param == "link":
        monkeypatch.setattr(atomic, "_RENAMEAT2", None)
    return request.param


def test_an_output_that_appears_during_the_write_is_kept(tmp_path, final_step):
    out = tmp_path / "o.gpkg"
    with pytest.raises(OutputExistsError, match="o.gpkg.*--overwrite"):
        with atomic_path(out) as tmp:
            tmp.write_bytes(b"mine")
            out.write_bytes(b"theirs")  # made by someone else after any check could have been done
    assert out.read_bytes() == b"theirs"
    assert list(tmp_path.iterdir()) == [out]  # no temporary left


def test_without_a_target_the_output_is_written(tmp_path, final_step):
    out = tmp_path / "o.gpkg"
    with atomic_path(out) as tmp:
        tmp.write_bytes(b"mine")
    assert out.read_bytes() == b"mine"
    assert os.stat(out).st_nlink == 1  # the link fallback removed the temporary name
    assert not list(tmp_path.glob(TMP_GLOB))


def test_replace_replaces(tmp_path):
    out = tmp_path / "o.gpkg"
    out.write_bytes(b"old")
    with atomic_path(out, replace=True) as tmp:
        tmp.write_bytes(b"new")
    assert out.read_bytes() == b"new"
    assert list(tmp_path.iterdir()) == [out]


def test_concurrent_writers_exactly_one_wins(tmp_path, final_step):
    out = tmp_path / "o.gpkg"
    n = 8
    barrier = threading.Barrier(n)
    won, refused = [], []

    def write(i: int) -> None:
        try:
            with atomic_path(out) as tmp:
                tmp.write_bytes(b"writer %d" % i)
                barrier.wait()  # every writer has its file ready: the renames race
        except OutputExistsError:
            refused.append(i)
        else:
            won.append(i)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(refused) == n - 1
    assert out.read_bytes() == b"writer %d" % won[0]
    assert list(tmp_path.iterdir()) == [out]


def test_a_file_system_without_either_way_refuses_rather_than_replace(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(errno.EPERM, os.strerror(errno.EPERM), str(dst))

    monkeypatch.setattr(atomic, "_RENAMEAT2", None)
    monkeypatch.setattr(atomic.os, "link", no_links)
    out = tmp_path / "o.gpkg"
    with pytest.raises(OutputError, match="cannot rename without replacing.*--overwrite"):
        with atomic_path(out) as tmp:
            tmp.write_bytes(b"mine")
    assert not list(tmp_path.iterdir())
