"""The batch report, and the sweep of a killed run's temporary files."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from scenetag.jobs.report import BatchReport, SceneRecord


def only_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_report_json_and_summary(tmp_path):
    report = BatchReport(started_at="t", seconds=12.0, scenes=[
        SceneRecord("/a/one.tif", "/o/one.gpkg", "ok", chips=10, seconds=2.0),
        SceneRecord("/a/two.tif", "/o/two.gpkg", "skipped"),
        SceneRecord("/a/bad.tif", "/o/bad.gpkg", "failed", error="scene '/a/bad.tif' is corrupt"),
    ])
    path = report.write(tmp_path / "r.json")
    assert only_files(tmp_path) == ["r.json"]  # no temporary file left beside it
    data = json.loads(path.read_text())
    assert data["counts"] == {"ok": 1, "empty": 0, "skipped": 1, "failed": 1}
    assert data["succeeded"] is False
    assert data["scenes"][2]["error"] == "scene '/a/bad.tif' is corrupt"
    text = report.summary()
    assert text.splitlines()[0].startswith("3 scenes: 1 ok, 0 empty, 1 skipped, 1 failed")
    assert "bad.tif" in text and "is corrupt" in text



def test_leftovers_of_a_killed_writer_are_swept(tmp_path):
    from scenetag.jobs.sweep import sweep_leftovers

    old = tmp_path / ".scene.gpkg.0123456789ab.tmp.gpkg"
    old.write_bytes(b"half")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    fresh = tmp_path / ".other.gpkg.0123456789ab.tmp.gpkg"
    fresh.write_bytes(b"being written")
    kept = tmp_path / "scene.gpkg"
    kept.write_bytes(b"")
    assert sweep_leftovers(tmp_path) == [old]
    assert fresh.exists() and kept.exists() and not old.exists()
