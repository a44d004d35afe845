"""Helpers for the model-path tests: real Planet chips, small label sets and small networks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import CHIPS as PLANET

PLANET_IMAGES = PLANET / "images"
PLANET_CSV = PLANET / "labels.csv"

#: A small timm network that trains and exports in well under a second at 64 px.
SMALL_ARCH = "mobilenetv3_small_050"
SMALL_LABELS = ("clear", "cloudy", "haze", "primary", "water")


def planet_or_skip() -> Path:
    """The Planet chips folder, or skip saying why."""
    if not PLANET_IMAGES.is_dir() or not PLANET_CSV.is_file():
        pytest.skip(f"real Planet chips absent at {PLANET} (shared data not laid beside the project)")
    return PLANET


def small_spec(labels=SMALL_LABELS, chip_size: int = 64, arch: str = SMALL_ARCH, thresholds=0.2,
               name: str = "small-test", **kw):
    from scenetag.model.spec import ModelSpec

    return ModelSpec.create(name, arch, labels, thresholds, chip_size=chip_size, **kw)


def small_model(spec=None, seed: int = 0):
    import torch

    from scenetag.model.nets import build_model

    torch.manual_seed(seed)
    return build_model(spec or small_spec(), pretrained=False).eval()


def planet_subset(tmp_path: Path, n: int = 48, labels: tuple[str, ...] | None = None) -> tuple[Path, Path]:
    """A label CSV of the first ``n`` Planet chips (tags limited to ``labels``), and the images folder."""
    planet_or_skip()
    lines = PLANET_CSV.read_text().splitlines()
    out = ["image_name,tags"]
    for line in lines[1:n + 1]:
        name, tags = line.split(",", 1)
        if labels is not None:
            tags = " ".join(t for t in tags.split() if t in labels)
        out.append(f"{name},{tags}")
    csv = tmp_path / "labels.csv"
    csv.write_text("\n".join(out) + "\n")
    return PLANET_IMAGES, csv


def real_chips(n: int = 8, size: int = 256) -> np.ndarray:
    """The first ``n`` real chips as uint8 NCHW RGB (resampled to ``size``)."""
    from scenetag.model.data import load_images, read_labels

    planet_or_skip()
    names = read_labels(PLANET_CSV).names[:n]
    return load_images(PLANET_IMAGES, names, size, on_wrong_size="refuse" if size == 256 else "resize")
