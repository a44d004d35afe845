"""The failure policy of a scene's tasks."""

from __future__ import annotations

import pytest

from scenetag.errors import ModelLoadError, SceneReadError
from scenetag.jobs.failures import SceneFailure, run_task


def _raise(exc: Exception):
    raise exc


def test_task_returns_scene_errors_and_raises_the_rest():
    assert run_task("prepare", lambda a, b: a + b, 1, 2) == 3
    failure = run_task("classify", _raise, SceneReadError("scene 'x.tif' is corrupt"))
    assert isinstance(failure, SceneFailure) and failure.stage == "classify"
    assert str(failure) == "scene 'x.tif' is corrupt"
    # A failed strip reaches the writer, which passes it on without writing.
    written = []
    assert run_task("write", lambda *tables: written.append(tables), "table", failure) is failure
    assert written == []
    # Model errors and anything else are not about one scene: raised.
    with pytest.raises(ModelLoadError):
        run_task("classify", _raise, ModelLoadError("model changed"))
    with pytest.raises(ZeroDivisionError):
        run_task("write", lambda: 1 / 0)
