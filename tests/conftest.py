"""Shared fixtures: real data, small generated rasters, and a small real model."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS

ROOT = Path(__file__).resolve().parents[1]
#: Environment variable pointing the tests (and ``make test DATA=...``, bench/) at the real data.
DATA_ENV = "SCENETAG_DATA"


def data_dir(environ=os.environ) -> Path:
    """The real data folder: ``$SCENETAG_DATA`` (relative to the current folder), else ``../shared/data``."""
    given = environ.get(DATA_ENV, "").strip()
    return Path(given).expanduser().resolve() if given else ROOT.parent / "shared" / "data"


DATA = data_dir()
SCENES = DATA / "scenes"
CHIPS = DATA / "chips" / "planet_amazon"


def pytest_report_header(config):
    import onnxruntime
    import rasterio as rio

    lines = [f"scenetag data: {DATA} ({'present' if SCENES.is_dir() else 'ABSENT: real-data tests skip'})",
             f"GDAL {rio.__gdal_version__}, rasterio {rio.__version__}, onnxruntime {onnxruntime.__version__}"]
    try:
        import torch

        lines.append(f"torch {torch.__version__}")
    except ImportError:
        lines.append("torch not installed")
    return lines


def pytest_configure(config):
    if os.environ.get(DATA_ENV, "").strip() and not DATA.is_dir():
        # Asked for by name: a typo must not turn every real-data test into a quiet skip.
        raise pytest.UsageError(f"{DATA_ENV}={os.environ[DATA_ENV]!r}: {DATA} is not a folder "
                                "(give the folder holding scenes/ and chips/)")
    config.addinivalue_line("markers", "slow: long test, deselected by default (run with -m slow)")
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU, skipped without one")
    config.addinivalue_line("markers", "qgis: needs PyQGIS (Debian's python3-qgis)")


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="no CUDA GPU on this machine")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


def real_scene(name: str) -> Path:
    """Path of a real scene in the shared data, or skip the test saying why."""
    path = SCENES / name
    if not path.exists():
        pytest.skip(f"real scene {path} is absent (shared data not laid beside the project)")
    return path


def copy_real_scenes(folder: Path, names) -> Path:
    """``folder`` holding copies of the real scenes ``names`` (skips the test where one is absent)."""
    for name in names:
        shutil.copy(real_scene(name), folder / name)
    return folder


def real_scenes() -> list[str]:
    """Names of every real scene (empty where the shared data is absent)."""
    if not SCENES.is_dir():
        return []
    return sorted(p.name for p in SCENES.glob("*.tif"))


@pytest.fixture
def make_raster(tmp_path):
    """Factory writing a small GeoTIFF: ``make_raster(name, data, **profile)``."""

    def _make(name="scene.tif", data=None, *, width=300, height=200, count=3, dtype="uint8",
              crs="EPSG:32633", transform=None, nodata=None, tiled=False, seed=0, **extra) -> Path:
        rng = np.random.default_rng(seed)
        if data is None:
            hi = 255 if dtype == "uint8" else 4000
            data = rng.integers(1, hi, size=(count, height, width)).astype(dtype)
        count, height, width = data.shape
        profile = dict(driver="GTiff", width=width, height=height, count=count, dtype=str(data.dtype),
                       crs=CRS.from_user_input(crs) if crs else None,
                       transform=transform or Affine(10.0, 0, 500000.0, 0, -10.0, 4000000.0),
                       nodata=nodata, **extra)
        if tiled:
            profile.update(tiled=True, blockxsize=64, blockysize=64)
        path = tmp_path / name
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
        return path

    return _make


@pytest.fixture(scope="module")
def predictor(tiny_model):
    """The tiny model's predictor (module-wide)."""
    from scenetag.model.backends import create_predictor

    return create_predictor(tiny_model)


@pytest.fixture(scope="module")
def scenes_dir(request, tmp_path_factory) -> Path:
    """A folder with copies of the real scenes the test module names in its ``SCENES`` (module-wide)."""
    return copy_real_scenes(tmp_path_factory.mktemp("scenes"), request.module.SCENES)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A small timm model with random weights, exported to ONNX with a scenetag spec.

    Chip size 64, 3 bands, 5 labels (one hostile name), resolution 10 m.
    """
    from tests.model_fixtures import export_tiny_model

    return export_tiny_model(tmp_path_factory.mktemp("model") / "tiny.onnx")


@pytest.fixture
def small_tmpfs(tmp_path):
    """``make(size)``: a folder on a fresh tmpfs of ``size`` (e.g. ``"400k"``), unmounted afterwards.

    Skips, saying why, where the test may not mount one (not root, no mount, a container without the right).
    """
    import shutil
    import subprocess

    mounts = []

    def make(size: str) -> Path:
        where = tmp_path / f"tmpfs{len(mounts)}"
        where.mkdir()
        if shutil.which("mount") is None:
            pytest.skip("no mount command: cannot make a small tmpfs for a full disk")
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode}): "
                        "a full disk needs root (or CAP_SYS_ADMIN)")
        mounts.append(where)
        return where

    yield make
    for where in mounts:
        subprocess.run(["umount", "-l", str(where)], check=False)
