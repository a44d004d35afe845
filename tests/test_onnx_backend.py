"""ONNX backend: IO binding (exercised through the CPU binding), device ids and provider options.

The CUDA/TensorRT binding runs the same code bound to ``"cuda"``; it has no test
here beyond the one that skips without onnxruntime-gpu.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from scenetag.model.backends.onnx_backend import OnnxPredictor, providers_for
from scenetag.model.backends import device_id
from scenetag.errors import ModelLoadError, OptionError

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TRT = "TensorrtExecutionProvider"


def chips(n, seed=0, size=64):
    return np.random.default_rng(seed).integers(0, 256, (n, 3, size, size), dtype=np.uint8)


@pytest.fixture(scope="module")
def predictors(tiny_model):
    """The same model on the CPU provider, through ``session.run`` and through IO binding."""
    return OnnxPredictor(tiny_model, io_binding=False), OnnxPredictor(tiny_model, io_binding=True)


def test_io_binding_is_off_by_default_on_the_cpu(tiny_model):
    pred = OnnxPredictor(tiny_model)
    assert pred.providers[0] == CPU and pred.io_binding is False


def test_io_binding_matches_session_run_across_batch_sizes(predictors):
    plain, bound = predictors
    assert bound.io_binding is True and bound._bind_device == ("cpu", 0)
    # 5, then 3 (the bound input is re-made), 3 again with new pixels (the same buffer,
    # updated in place), then back to 5.
    reused = 0
    for n, seed in ((5, 0), (3, 1), (3, 2), (5, 3)):
        x = chips(n, seed)
        before = bound._bound_input
        got = bound.predict(x)
        assert got.dtype == np.float32 and got.shape == (n, 5)
        np.testing.assert_array_equal(got, plain.predict(x))
        assert bound._bound_input.shape() == [n, 3, 64, 64]
        if before is not None and before.shape() == [n, 3, 64, 64]:
            assert bound._bound_input is before, "same batch shape, but the bound input was re-made"
            reused += 1
    assert reused >= 1, "no call had the previous call's batch shape"


def test_io_binding_empty_batch(predictors):
    plain, bound = predictors
    empty = np.zeros((0, 3, 64, 64), np.uint8)
    for pred in (plain, bound):
        out = pred.predict(empty)
        assert out.shape == (0, 5) and out.dtype == np.float32
    # An empty batch leaves the binding usable.
    x = chips(2, seed=4)
    np.testing.assert_array_equal(bound.predict(x), plain.predict(x))


@pytest.mark.parametrize("device, expected", [
    ("cpu", 0), ("auto", 0), ("cuda", 0), ("cuda:0", 0), ("cuda:1", 1), ("cuda:12", 12),
])
def test_device_id(device, expected):
    assert device_id(device) == expected


@pytest.mark.parametrize("device", ["cuda:", "cuda:x", "cuda:-1", "cuda:1.5"])
def test_device_id_rejects_a_bad_index(device):
    with pytest.raises(OptionError, match="cuda:N"):
        device_id(device)


@pytest.mark.parametrize("available, expected", [
    ([CUDA, CPU], [(CUDA, {"device_id": 1}), CPU]),
    ([TRT, CUDA, CPU], [(TRT, {"device_id": 1}), (CUDA, {"device_id": 1}), CPU]),
])
def test_providers_for_cuda_1_passes_the_device_id(available, expected):
    assert providers_for("cuda:1", available) == expected


def test_providers_for_plain_cuda_is_gpu_0():
    assert providers_for("cuda", [CUDA, CPU]) == [(CUDA, {"device_id": 0}), CPU]


def test_providers_for_on_a_cpu_build():
    cpu_build = ["AzureExecutionProvider", CPU]
    assert providers_for("cpu", cpu_build) == [CPU]
    assert providers_for("cpu", [CUDA, CPU]) == [CPU]
    assert providers_for("auto", cpu_build) == [CPU]
    with pytest.raises(ModelLoadError, match=r"--device cuda:1 asks for CUDA.*scenetag\[gpu\]"):
        providers_for("cuda:1", cpu_build)


@pytest.mark.skipif(CUDA not in ort.get_available_providers(),
                    reason="onnxruntime-gpu (CUDAExecutionProvider) is not installed")
def test_cuda_io_binding_matches_the_cpu(tiny_model):  # pragma: no cover - needs onnxruntime-gpu
    gpu = OnnxPredictor(tiny_model, device="cuda:0")
    assert gpu.io_binding is True and gpu._bind_device == ("cuda", 0)
    cpu = OnnxPredictor(tiny_model)
    for n in (5, 3):
        x = chips(n, seed=n)
        np.testing.assert_allclose(gpu.predict(x), cpu.predict(x), atol=1e-4)


@pytest.mark.parametrize("hw, spec_chip, loads", [((128, 128), 64, False), ((64, 96), 64, False),
                                                   ((64, 64), 64, True), (("H", "W"), 64, True)])
def test_spec_chip_size_is_checked_against_a_fixed_input_size(tmp_path, hw, spec_chip, loads):
    """A fixed H/W that differs from the spec's chip size is refused at load, naming both sizes and the fix."""
    from scenetag.errors import ModelSpecError
    from tests.model_fixtures import export_constant_model, tiny_spec

    path = export_constant_model(tmp_path / "m.onnx", [0.5] * 5, tiny_spec(chip_size=spec_chip), input_hw=hw)
    if loads:
        assert OnnxPredictor(path).predict(chips(2, size=spec_chip)).shape == (2, 5)
        return
    with pytest.raises(ModelSpecError) as err:
        OnnxPredictor(path)
    message = str(err.value)
    assert f"takes {hw[0]}x{hw[1]} pixel chips but its spec says chip_size {spec_chip}" in message
    assert f'pass --spec with "chip_size": {hw[0]}' in message and "re-export" in message
