"""bench/bench_scheduler.py runs, on a tiny setting, with the stock ``dask scheduler`` / ``dask worker`` CLI.

So that the benchmark behind docs/scale.md cannot rot: its cluster starts and
stops, the job runs through ``run_batch`` on it, and the figures count what
was run (tasks per scene, strips per chips-per-task setting).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.conftest import CHIPS

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "bench_scheduler.py"


@pytest.mark.slow
def test_bench_scheduler_tiny(tmp_path):
    if not (CHIPS / "images").is_dir():
        pytest.skip(f"real Planet chips absent at {CHIPS} (shared data not laid beside the project)")
    out = tmp_path / "figures.json"
    work = tmp_path / "work"
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--scenes", "3", "--noop-tasks", "20", "--noop-scenes", "5",
         "--sweep-scenes", "1", "--sweep-side", "1024", "--sweep-chip", "64", "--chips-per-task", "16,256",
         "--work", str(work), "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    fig = json.loads(out.read_text())

    assert fig["idle"]["scheduler_cpu_per_s"] >= 0 and "scheduler_cpu_ms_per_task_net" in fig["noop_burst"]
    assert set(fig["classify_in_process"]["median_s"]) == {"1", "2", "3", "4"}  # the 4 chips of a small scene
    b = fig["bytes_per_chip"]
    assert b["raw"] == {"3 x uint8": 3 * 256 * 256, "4 x uint16": 8 * 256 * 256}
    assert b["4 x uint16"]["deflate-1"] < b["4 x uint16"]["none"] and b["borneo_full_tiles"] > 0
    assert fig["noop_burst"]["stream"]["tasks"] == 20
    assert fig["noop_scenes"]["stream"]["tasks"] == 4 * 5
    assert set(fig["noop_scenes"]["stream"]["stages"]) == {"prepare", "hash", "classify", "write"}
    assert fig["noop_scenes_payload"]["stream"]["tasks"] == 4 * 5

    small = fig["job_small"]
    assert small["counts"]["ok"] == 3
    assert small["chips"] == 3 * 4  # 512² px scenes, 256 px chips, all valid
    # prepare, hash, one classify strip, write: each step of each scene ran as a task on a worker.
    assert {k: v["tasks"] for k, v in small["stream"]["stages"].items()} == {
        "prepare": 3, "hash": 3, "classify": 3, "write": 3}
    assert small["scheduler_cpu_ms_per_task"] > 0 and small["workers_cpu_ms_per_scene"] > 0
    assert fig["job_small_skipped"]["counts"]["skipped"] == 3
    assert set(fig["job_small_skipped"]["stream"]["stages"]) == {"prepare"}  # the skip check alone

    # 1024² px at 64 px: 16 x 16 chips; 16 chips per task is one row a strip, 256 the whole scene.
    settings = fig["sweep"]["settings"]
    assert {k: v["strips"] for k, v in settings.items()} == {"16": 16, "256": 1}
    assert {k: v["chips"] for k, v in settings.items()} == {"16": 256, "256": 256}
    assert settings["16"]["stream"]["stages"]["classify"]["tasks"] == 16
    assert "per_task_s" in fig["sweep"]["classify_fit"]

    # The cluster's processes are gone with the script, and its scenes stay in the work folder only.
    after = {p.pid for p in psutil.Process().children(recursive=True)}
    assert after <= before
    assert (work / "small").is_dir() and not list(ROOT.glob("bench/**/crop_*.tif"))
