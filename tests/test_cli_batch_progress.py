"""What a user sees of ``batch`` while it runs, through the CLI on real Dask clusters (LocalCluster, loopback).

Chips done / planned and chips/s relayed from the workers, a line per scene,
a bar on a terminal and log lines elsewhere; the dashboard's task names read
from the scheduler; no dashboard noise, no heartbeat traceback at shutdown;
``--dashboard-hold``.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
import urllib.request

import pytest
from click.testing import CliRunner
from distributed import Client, LocalCluster

from cli import main
from scenetag.jobs.progress import BatchProgress, SceneChips
from scenetag.outputs_schema.run_record import read_run_record
from tests.conftest import ROOT

SIZE = 1200  # 10 m pixels, 64 px chips: 324 chips a scene, a few seconds on one core
CHIPS_PER_TASK = 100


@pytest.fixture(scope="module")
def drop(tmp_path_factory):
    import numpy as np
    import rasterio
    from affine import Affine

    folder = tmp_path_factory.mktemp("drop")
    for i in range(2):
        data = np.random.default_rng(i).integers(1, 255, (3, SIZE, SIZE)).astype("uint8")
        with rasterio.open(folder / f"s{i}.tif", "w", driver="GTiff", width=SIZE, height=SIZE, count=3,
                           dtype="uint8", crs="EPSG:32633", transform=Affine(10, 0, 500000, 0, -10, 4000000)) as dst:
            dst.write(data)
    return folder


def chips_per_scene() -> int:
    return (SIZE // 64 + (SIZE % 64 > 0)) ** 2  # --edge shift: the partial edge chips are shifted in


def test_scene_chips_never_pass_the_total_and_end_cleanly():
    seen = []
    chips = SceneChips(seen.append, 10)
    chips(4), chips(9)
    assert seen == [4, 6] and chips.done == 10
    chips = SceneChips(seen.append, 10)
    chips(3)
    chips.complete()  # written: the counts still on their way are taken as done
    chips(5)  # a late event changes nothing
    assert seen[-2:] == [3, 7]
    stopped = SceneChips(seen.append, 10)
    stopped(2)
    stopped.stop()  # the try failed
    stopped(5)
    assert seen[-1] == 2 and stopped.done == 2


def test_batch_progress_counts_and_rate_from_the_first_chip():
    now = [0.0]
    changes = []
    progress = BatchProgress(lambda snap, n: changes.append((snap, n)), clock=lambda: now[0])
    progress.start(3)
    now[0] = 10.0  # the cluster started
    a, b = progress.scene(100), progress.scene(50)
    progress.done(planned=False)  # a skipped scene
    assert changes[-1][0].line() == "1/3 scenes, 0/150 chips, 0.0 chips/s, 10 s"
    a(40)
    now[0] = 12.0
    b(20)
    snap = progress.snapshot()
    assert (snap.chips_done, snap.chips_planned, snap.chips_per_second) == (60, 150, 30.0)
    assert changes[-1][1] == 20


@pytest.fixture
def cluster():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as c, \
            Client(c) as client:
        yield c, client


def test_without_a_terminal_progress_is_logged_and_tasks_have_their_own_names(drop, tiny_model, tmp_path,
                                                                               cluster, monkeypatch):
    c, client = cluster
    monkeypatch.setenv("SCENETAG_PROGRESS_INTERVAL", "0.3")
    config = tmp_path / "scenetag.toml"  # batch takes its defaults from a file too, and records it
    config.write_text(f"[batch]\nchips-per-task = {CHIPS_PER_TASK}\nmin-valid = 0.3\n")
    args = ["--config", str(config), "batch", str(drop), "-d", str(tmp_path / "out"), "-m", str(tiny_model),
            "--scheduler", c.scheduler_address]
    res = CliRunner().invoke(main, args, catch_exceptions=False)  # CliRunner's stderr is no terminal
    assert res.exit_code == 0, res.output
    run = read_run_record(tmp_path / "out" / "s0.gpkg")
    assert run.options["min_valid"] == 0.3
    assert run.config["options"] == {"chips-per-task": CHIPS_PER_TASK, "min-valid": 0.3}
    report = json.loads((tmp_path / "out" / "batch-report.json").read_text())
    assert all(s["strips"] == 4 for s in report["scenes"])  # 19 rows of 19 chips, 5 rows a strip
    total = 2 * chips_per_scene()
    progress = [line for line in res.output.splitlines() if line.startswith("INFO scenetag.batch: progress:")]
    counts = [tuple(int(g.replace(",", "")) for g in m.groups()) for m in
              (re.search(r"(\d+)/2 scenes, ([\d,]+)/([\d,]+) chips", line) for line in progress) if m]
    assert counts, res.output
    # Chips are counted while the scenes run, before any scene is finished: relayed from the workers.
    assert any(scenes == 0 and 0 < done < planned for scenes, done, planned in counts), progress
    assert counts[-1] == (2, total, total), progress
    for i in range(2):
        assert re.search(rf"INFO scenetag.batch: ok s{i}.tif: {chips_per_scene():,} chips in [\d.]+ s "
                         rf"\([\d.]+ chips/s\)", res.output), res.output
    assert "chips/s" in progress[-1]
    prefixes = set(client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.task_prefixes)))
    assert {"scenetag_prepare", "scenetag_classify", "scenetag_write"} <= prefixes, prefixes
    assert "scenetag" not in prefixes  # what key_split made of scenetag-classify-<id>
    # -q: no progress lines, no scene lines
    res = CliRunner().invoke(main, ["-q", *args, "--force"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "progress:" not in res.output and "INFO" not in res.output


def _close_dashboard_page_abruptly(link: str) -> None:
    """Open the dashboard's status page as a browser does (bokeh's websocket), then drop the connection."""
    from bokeh.client import pull_session

    session = pull_session(url=link)
    time.sleep(1.0)  # the server pushes updates to the page meanwhile
    ws = session._connection._socket
    ws = getattr(ws, "_socket", ws)
    sock = ws.protocol.stream.socket if hasattr(ws, "protocol") else ws.stream.socket
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # a reset, as a killed tab
    sock.close()


def test_stderr_of_a_quiet_batch_is_clean_despite_page_close_and_slow_heartbeats(drop, tiny_model, tmp_path):
    """-q: only the cluster's two lines.  No Bokeh wildcard warning, nothing when the dashboard page is
    closed mid-run, and no heartbeat traceback at shutdown although heartbeats are answered late."""
    env = {**os.environ, "DASK_DISTRIBUTED__SCHEDULER__PRELOAD": json.dumps([str(ROOT / "tests" /
                                                                             "slow_heartbeat_preload.py")])}
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "-q", "batch", str(drop), "-d",
                             str(tmp_path / "out"), "-m", str(tiny_model), "--workers", "2", "--dashboard-address",
                             "127.0.0.1:0", "--chips-per-task", str(CHIPS_PER_TASK), "--no-progress"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("Dask dashboard: "):
            _close_dashboard_page_abruptly(line.split(": ", 1)[1].strip())
            break
    rest = proc.stderr.read()
    out = proc.stdout.read()
    assert proc.wait(timeout=180) == 0, "".join(lines) + rest
    assert "2 scenes: 2 ok" in out
    stderr = "".join(lines) + rest
    assert [line for line in stderr.splitlines() if line.strip()] == [
        "Dask LocalCluster: 2 workers, 2 threads", lines[-1].strip()], stderr


def _run_on_a_terminal(args, until: str, then, timeout: float = 240):
    """Run ``args`` with stderr on a pseudo-terminal (120 columns); ``then(proc, text so far)`` once ``until``
    appears there.  Returns the exit code, stderr (carriage returns as new lines) and stdout."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    # A session of its own, so that a signal to its process group is what a terminal's Ctrl-C does; and
    # Ctrl-C taken, as by a terminal's foreground job (tests started from a background shell job would
    # hand it SIGINT ignored, which Python keeps).
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=slave, text=True,
                            start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    os.close(slave)
    seen, fired, deadline = b"", False, time.time() + timeout
    while time.time() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # the process ended: the terminal is gone
                break
            if not data:
                break
            seen += data
            if not fired and until in seen.decode(errors="replace"):
                fired = True
                then(proc, seen.decode(errors="replace"))
        elif proc.poll() is not None:
            break
    os.close(master)
    out = proc.stdout.read()
    return proc.wait(timeout=60), seen.decode(errors="replace").replace("\r", "\n"), out


def test_on_a_terminal_a_bar_of_chips_then_the_dashboard_held_until_ctrl_c(drop, tiny_model, tmp_path):
    held = {}

    def look_then_interrupt(proc, text):
        held["at"] = time.time()
        link = re.search(r"at (http://\S+) \(Ctrl-C", text).group(1)
        held["status"] = urllib.request.urlopen(link, timeout=10).status  # the dashboard is still up
        os.killpg(proc.pid, signal.SIGINT)  # the whole group, LocalCluster workers included, as Ctrl-C

    args = [sys.executable, str(ROOT / "cli.py"), "batch", str(drop), "-d", str(tmp_path / "out"), "-m",
            str(tiny_model), "--workers", "2", "--dashboard-address", "127.0.0.1:0", "--chips-per-task",
            str(CHIPS_PER_TASK), "--dashboard-hold", "120"]
    rc, stderr, out = _run_on_a_terminal(args, "(Ctrl-C ends the hold)", look_then_interrupt)
    assert rc == 0, stderr  # the batch succeeded; Ctrl-C only ended the hold
    assert held.get("status") == 200, stderr
    assert time.time() - held["at"] < 60, "Ctrl-C did not end the hold"
    total = 2 * chips_per_scene()
    bars = re.findall(r"chips:\s+\d+%\|.*?\| (\d+)/(\d+) \[.*?chip/s, (\d)/2 scenes", stderr)
    assert bars, stderr
    assert any(0 < int(done) < total and scenes == "0" for done, _, scenes in bars), bars  # moving mid-scene
    assert bars[-1][:2] == (str(total), str(total)), bars
    assert re.search(r"^ok s0.tif: [\d,]+ chips in [\d.]+ s \([\d.]+ chips/s\)", stderr, re.M), stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert "2 scenes: 2 ok" in out and "report:" in out
