"""Batch inputs: files, folders, globs and list files, and the outputs named after them."""

from __future__ import annotations

from pathlib import Path

import pytest

from scenetag.jobs.inputs import InputError, expand_inputs, output_paths


def only_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_inputs_files_folders_globs_and_lists(tmp_path):
    a = _touch(tmp_path / "drop" / "a.tif")
    b = _touch(tmp_path / "drop" / "b.TIFF")
    _touch(tmp_path / "drop" / "notes.md")
    c = _touch(tmp_path / "deep" / "x" / "c.tif")
    d = _touch(tmp_path / "listed" / "d.tif")
    lst = tmp_path / "listed" / "scenes.txt"
    lst.write_text("# tonight\nd.tif\n\n" + str(a) + "   # again, deduplicated\n")

    scenes = expand_inputs([tmp_path / "drop", str(tmp_path / "deep" / "**" / "*.tif"), lst,
                            str(tmp_path / "missing.tif")])

    assert scenes == [a, b, c, d, tmp_path / "missing.tif"]
    assert all(p.is_absolute() for p in scenes)


def test_inputs_glob_without_matches_gives_nothing(tmp_path, caplog):
    assert expand_inputs([str(tmp_path / "*.tif")]) == []
    assert "matches no files" in caplog.text


def test_inputs_list_that_includes_itself_is_refused(tmp_path):
    lst = tmp_path / "loop.lst"
    lst.write_text("loop.lst\n")
    with pytest.raises(InputError, match="includes itself"):
        expand_inputs([lst])


def test_outputs_are_named_after_scenes_and_clashes_refused(tmp_path):
    scenes = [tmp_path / "x" / "s1.tif", tmp_path / "y" / "s2.tif"]
    assert output_paths(scenes, tmp_path / "out") == [tmp_path / "out" / "s1.gpkg", tmp_path / "out" / "s2.gpkg"]
    with pytest.raises(InputError, match=r"would both be written to .*[sS]1\.gpkg") as err:
        output_paths(scenes + [tmp_path / "z" / "S1.tif"], tmp_path / "out")
    assert str(scenes[0]) in str(err.value) and str(tmp_path / "z" / "S1.tif") in str(err.value)
