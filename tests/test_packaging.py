"""What an install puts into site-packages: scenetag alone, with its data files."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    import shutil

    pytest.importorskip("setuptools", minversion="70.1", reason="building the wheel needs setuptools 70.1+")
    out = tmp_path_factory.mktemp("wheel")
    # Built from a copy: setuptools leaves build/ and *.egg-info beside the sources it builds.
    src = tmp_path_factory.mktemp("src") / "scenetag"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "out", "*.egg-info",
                                                             "__pycache__", ".pytest_cache", ".hypothesis"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(src)], capture_output=True, text=True)
    assert proc.returncode == 0, f"pip wheel failed: {proc.stderr}"  # a broken setup.cfg is a failure
    [path] = out.glob("scenetag-*.whl")
    with zipfile.ZipFile(path) as z:
        return {name: z.read(name) for name in z.namelist()}


def test_only_scenetag_lands_at_the_top_of_site_packages(wheel):
    top = {name.split("/")[0] for name in wheel}
    assert {t for t in top if not t.endswith(".dist-info")} == {"scenetag"}


def test_the_project_folders_install_under_scenetag(wheel):
    for module in ("scenetag/tiler/grid.py", "scenetag/model/spec.py", "scenetag/jobs/runner.py",
                   "scenetag/outputs_schema/schema.py", "scenetag/cli.py", "scenetag/commands/run.py",
                   "scenetag/model/default/scenetag-default.onnx", "scenetag/model/default/MODEL_CARD.md"):
        assert module in wheel, module


def test_every_subpackage_of_the_checkout_is_installed(wheel):
    """A new folder with an __init__.py that setup.cfg's package list forgot would be missing from installs."""
    for folder in ("scenetag", "tiler", "model", "jobs", "outputs_schema"):
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.relative_to(ROOT).as_posix()
            installed = rel if folder == "scenetag" else f"scenetag/{rel}"
            assert installed in wheel, f"{rel} is not installed: add its package to setup.cfg"


def test_the_console_script_points_into_scenetag(wheel):
    [entry] = [name for name in wheel if name.endswith(".dist-info/entry_points.txt")]
    scripts = wheel[entry].decode().split("[console_scripts]")[1].split("[")[0]
    assert [line.strip() for line in scripts.splitlines() if line.strip()] == ["scenetag = scenetag.cli:main"]
