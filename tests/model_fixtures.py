"""The test models, in one place: small timm networks, their specs, the exported ONNX test model, real Planet chips.

``small_spec``/``small_model`` are the network and spec the model tests train
and export; ``tiny_spec``/``export_tiny_model`` are the ONNX model the job tests
run (the same small network, with five labels of which one is hostile).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pytest

from scenetag.model.spec import ModelSpec
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


#: Labels of the job tests' ONNX model: one is hostile to SQL, file and column names.
TINY_LABELS = ("clear", "cloudy", "primary", "water", "it's; DROP TABLE chips--")


def small_spec(labels=SMALL_LABELS, chip_size: int = 64, arch: str = SMALL_ARCH, thresholds=0.2,
               name: str = "small-test", **kw) -> ModelSpec:
    """A spec for :data:`SMALL_ARCH` at 64 px."""
    return ModelSpec.create(name, arch, labels, thresholds, chip_size=chip_size, **kw)


def tiny_spec(chip_size: int = 64, resolution_m: float = 10.0, labels=TINY_LABELS) -> ModelSpec:
    """The job tests' model spec: five labels (one hostile), thresholds that differ per label."""
    thresholds = [0.45, 0.5, 0.5, 0.55, 0.5][: len(labels)] + [0.5] * max(0, len(labels) - 5)
    return small_spec(labels, chip_size, SMALL_ARCH, thresholds, name="tiny-test", resolution_m=resolution_m)


def export_tiny_model(path: Path, spec: ModelSpec | None = None, seed: int = 0) -> Path:
    """Export a random-weight :func:`small_model` with ``spec`` (default :func:`tiny_spec`) in the ONNX metadata."""
    from scenetag.model.training.export import export_onnx

    spec = spec or tiny_spec()
    export_onnx(small_model(spec, seed), spec, path, overwrite=True, n_random=1)
    return Path(path)


def small_model(spec=None, seed: int = 0):
    """A random-weight :data:`SMALL_ARCH` network for ``spec`` (logits, eval mode)."""
    import torch

    from scenetag.model.training.nets import build_model

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
    from scenetag.model.training.data import load_images, read_labels

    planet_or_skip()
    names = read_labels(PLANET_CSV).names[:n]
    return load_images(PLANET_IMAGES, names, size, on_wrong_size="refuse" if size == 256 else "resize")


def export_constant_model(path: Path, outputs: Sequence[float], spec: ModelSpec | None = None,
                          input_hw: tuple[int | str, int | str] = ("H", "W")) -> Path:
    """A hand-built ONNX model that returns ``outputs`` (one value per label) for every chip.

    Built with ``onnx.helper`` (no torch): ``out = mean(x) * 0 + outputs``, so it
    really reads its input.  ``outputs`` may hold logits, NaN or inf (models a
    checked job must refuse); ``input_hw`` fixes the input's H/W when ints.
    """
    import onnx
    from onnx import TensorProto, helper

    from scenetag.model.spec import METADATA_KEY

    spec = spec or tiny_spec()
    values = np.asarray(outputs, np.float32).reshape(1, -1)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["m"], axes=[2, 3], keepdims=0),  # (N, C)
         helper.make_node("ReduceMean", ["m"], ["m1"], axes=[1], keepdims=1),  # (N, 1)
         helper.make_node("Mul", ["m1", "zero"], ["z"]),
         helper.make_node("Add", ["z", "values"], ["probs"])],  # (N, L)
        "constant",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", spec.n_bands, *input_hw])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", spec.n_labels])],
        [helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]),
         helper.make_tensor("values", TensorProto.FLOAT, list(values.shape), values.ravel().tolist())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    helper.set_model_props(model, {METADATA_KEY: spec.to_json()})
    onnx.save(model, str(path))
    return Path(path)


def generated_chips(folder: Path, tags_of, n: int = 8) -> Path:
    """``n`` random 64 px PNG chips in ``folder/images`` and ``folder/labels.csv`` (train's layout),
    chip ``i`` tagged ``tags_of(i)``; returns the images folder."""
    import numpy as np
    from PIL import Image

    images = folder / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    rows = ["image_name,tags"]
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(images / f"c{i}.png")
        rows.append(f"c{i},{tags_of(i)}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return images
