"""Where the tests find the real data: ``$SCENETAG_DATA`` and ``make test DATA=/path``, else ``../shared/data``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from tests.conftest import DATA_ENV, ROOT, data_dir

#: A test module with no real-data test: collecting it is enough to print the header.
PROBE = "tests/test_data_location.py::test_default_is_beside_the_project"


def _pytest(env_value: str | None, cwd=ROOT):
    env = {k: v for k, v in os.environ.items() if k != DATA_ENV}
    if env_value is not None:
        env[DATA_ENV] = env_value
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:randomly", "--co", PROBE],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_default_is_beside_the_project():
    assert data_dir({}) == ROOT.parent / "shared" / "data"
    assert data_dir({DATA_ENV: "  "}) == ROOT.parent / "shared" / "data"


def test_environment_variable_points_the_tests_at_the_data(tmp_path):
    (tmp_path / "scenes").mkdir()
    proc = _pytest(str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"scenetag data: {tmp_path} (present)" in proc.stdout


def test_a_relative_path_is_taken_from_the_current_folder(tmp_path):
    (tmp_path / "mydata" / "scenes").mkdir(parents=True)
    assert data_dir({DATA_ENV: "mydata"}) == (ROOT / "mydata").resolve()  # pytest runs from the root
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert data_dir({DATA_ENV: "mydata"}) == tmp_path / "mydata"
    finally:
        os.chdir(cwd)


def test_a_data_folder_that_is_not_there_is_a_usage_error_not_skips(tmp_path):
    proc = _pytest(str(tmp_path / "typo"))
    assert proc.returncode == 4, proc.stdout + proc.stderr  # pytest's usage error
    assert f"{DATA_ENV}=" in proc.stderr and "is not a folder" in proc.stderr


def test_make_test_passes_data_to_the_tests(tmp_path):
    if shutil.which("make") is None:
        import pytest

        pytest.skip("no make on this machine")
    env = {k: v for k, v in os.environ.items() if k != DATA_ENV}
    dry = subprocess.run(["make", "-n", "test", f"DATA={tmp_path}"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60)
    assert f'SCENETAG_DATA="{tmp_path}"' in dry.stdout, dry.stdout + dry.stderr
    # Named by neither: nothing is passed, so a fresh machine without ../shared skips instead of failing.
    plain = {k: v for k, v in env.items() if k not in (DATA_ENV, "DATA")}
    dry = subprocess.run(["make", "-n", "test"], cwd=ROOT, env=plain, capture_output=True, text=True, timeout=60)
    assert "SCENETAG_DATA=" not in dry.stdout and "python -m pytest" in dry.stdout, dry.stdout + dry.stderr
    # Without DATA, the environment variable is what make passes on.
    dry = subprocess.run(["make", "-n", "test"], cwd=ROOT, env={**env, DATA_ENV: str(tmp_path)},
                         capture_output=True, text=True, timeout=60)
    assert f'SCENETAG_DATA="{tmp_path}"' in dry.stdout, dry.stdout + dry.stderr
