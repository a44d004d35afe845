"""The backend seam: the name → backend registry, the predictor protocols, and the Submitter's choice of path."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from scenetag.errors import ModelLoadError, OptionError
from scenetag.model.backends import (AsyncPredictor, Predictor, Submitter, backend_for, backend_names,
                                     create_predictor, register_backend)
from scenetag.model.backends.base import check_device, device_id
from scenetag.model.backends.registry import unregister_backend
from tests.model_fixtures import tiny_spec


class FakePredictor:
    """A synchronous backend registered by module path in the tests below."""

    made: list[dict] = []

    def __init__(self, path, device="auto", spec=None, precision="fp32") -> None:
        self.spec = spec or tiny_spec()
        self.path, self.sha256, self.batch_size, self.device = str(path), "0" * 64, 2, "cpu"
        FakePredictor.made.append({"path": self.path, "device": device, "precision": precision})

    @property
    def on_gpu(self) -> bool:
        return False

    def predict(self, chips: np.ndarray) -> np.ndarray:
        return np.full((len(chips), self.spec.n_labels), 0.5, np.float32)


class FakeGpu(FakePredictor):
    """An asynchronous backend that says it is on a GPU: the Submitter must call its own submit."""

    gpu_seconds = 0.0

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.device, self.submitted = "cuda:0", []

    @property
    def on_gpu(self) -> bool:
        return True

    def submit(self, parts, direct=False):
        from scenetag.model.backends import Done

        self.submitted.append(direct)
        return Done(self.predict(np.concatenate(parts)))

    def register_host(self, array) -> bool:
        return True

    def unregister_host(self, array) -> None:
        pass


@pytest.fixture
def fake_backend(tmp_path):
    register_backend("fake", "tests.test_backends:FakePredictor", (".fake",))
    FakePredictor.made.clear()
    yield tmp_path / "m.fake"
    unregister_backend("fake")


def test_backend_names_list_the_registered_backends_auto_first(fake_backend):
    assert backend_names() == ("auto", "onnx", "openvino", "torch", "fake")


def test_an_unknown_backend_is_an_error_naming_the_choices(tiny_model):
    with pytest.raises(ModelLoadError, match=r"backend 'nope' is unknown: use one of auto, onnx, openvino, torch"):
        create_predictor(tiny_model, backend="nope")


def test_a_registered_backend_is_picked_by_name(fake_backend, tiny_model):
    pred = create_predictor(tiny_model, backend="fake", device="cpu", precision="bf16")
    assert isinstance(pred, FakePredictor)
    assert FakePredictor.made == [{"path": str(tiny_model), "device": "cpu", "precision": "bf16"}]


def test_auto_picks_a_backend_by_suffix(fake_backend):
    fake_backend.write_bytes(b"weights")
    assert isinstance(create_predictor(fake_backend), FakePredictor)
    assert [backend_for(f"m{s}") for s in (".onnx", ".pt", ".PTH", ".ckpt", ".fake", ".bin")] == \
        ["onnx", "torch", "torch", "torch", "fake", "onnx"]  # an unclaimed suffix: ONNX Runtime


def test_auto_loads_an_onnx_file_with_onnx_runtime_without_openvino(tiny_model, monkeypatch):
    from scenetag.model.backends import openvino_backend
    from scenetag.model.backends.onnx_backend import OnnxPredictor

    monkeypatch.setattr(openvino_backend, "available", lambda: False)
    pred = create_predictor(tiny_model)
    assert isinstance(pred, OnnxPredictor) and isinstance(pred, Predictor)
    assert pred.device == "cpu" and pred.on_gpu is False and pred.batch_size == 8
    assert not isinstance(pred, AsyncPredictor)  # no submit, register_host or gpu_seconds


def test_auto_is_reserved():
    with pytest.raises(ValueError, match="reserved"):
        register_backend("auto", "tests.test_backends:FakePredictor")


def test_listing_the_backends_imports_neither_onnxruntime_nor_torch():
    code = ("import sys; from scenetag.model.backends import backend_names; backend_names(); "
            "print(sorted(m for m in ('onnxruntime', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:3"])
def test_device_names_are_checked_in_one_place(device):
    assert check_device(device) == device


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "mps"])
def test_an_unknown_device_is_an_error_naming_the_choices(device, tiny_model):
    with pytest.raises(OptionError, match=repr(device)):
        create_predictor(tiny_model, device=device)


def test_device_id():
    assert [device_id(d) for d in ("cpu", "auto", "cuda", "cuda:2")] == [0, 0, 0, 2]


def test_the_torch_backend_on_the_cpu_is_an_async_predictor_off_the_gpu(tmp_path):
    pytest.importorskip("torch")
    from scenetag.model.backends.torch_backend import TorchPredictor
    from scenetag.model.training.checkpoint import save_checkpoint
    from tests.model_fixtures import small_model

    spec = tiny_spec()
    pred = create_predictor(save_checkpoint(tmp_path / "m.pt", small_model(spec), spec), device="cpu")
    assert isinstance(pred, TorchPredictor) and isinstance(pred, AsyncPredictor)
    assert pred.device == "cpu" and pred.on_gpu is False and pred.gpu_seconds == 0.0


def test_the_submitter_runs_a_sync_predictor_on_a_thread(tmp_path):
    pred = FakePredictor(tmp_path / "m")
    x = np.zeros((3, 3, 64, 64), np.uint8)
    with Submitter(pred) as sub, sub.uploading_from(x) as direct:
        pending = sub.submit([x[:1], x[1:]])
        pending.uploaded()
        assert direct is False and pending.result().shape == (3, 5)


def test_the_submitter_uses_an_async_predictor_s_own_submit_on_a_gpu(tmp_path):
    pred = FakeGpu(tmp_path / "m")
    x = np.zeros((3, 3, 64, 64), np.uint8)
    with Submitter(pred) as sub:
        sub.submit([x])
        with sub.uploading_from(x) as direct:
            sub.submit([x])
    assert direct is True and pred.submitted == [False, True]


def test_the_submitter_runs_an_async_predictor_off_the_gpu_on_a_thread(tmp_path, monkeypatch):
    pred = FakeGpu(tmp_path / "m")
    monkeypatch.setattr(FakeGpu, "on_gpu", property(lambda self: False))  # the same class, now off the GPU
    x = np.zeros((2, 3, 64, 64), np.uint8)
    with Submitter(pred) as sub, sub.uploading_from(x) as direct:
        assert sub.submit([x]).result().shape == (2, 5)
    assert direct is False and pred.submitted == []
