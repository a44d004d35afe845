"""The torch backend's precision, batching and out-of-memory handling (CPU here; CUDA where marked)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from model.checkpoint import save_checkpoint  # noqa: E402
from model.predictor import load_predictor  # noqa: E402
from model.torch_backend import TorchPredictor  # noqa: E402
from scenetag.errors import ModelError, OptionError  # noqa: E402
from tests.model_factory import tiny_network, tiny_spec  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    spec = tiny_spec()
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "m.pt", tiny_network(spec, seed=1), spec)


def chips(n=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 3, 64, 64), dtype=np.uint8)


def test_bf16_autocast_runs_and_stays_close_to_fp32(checkpoint):
    x = chips()
    fp32 = TorchPredictor(checkpoint).predict(x)
    bf16 = TorchPredictor(checkpoint, precision="bf16").predict(x)
    assert bf16.dtype == np.float32 and bf16.shape == fp32.shape
    diff = np.abs(bf16 - fp32).max()
    assert 0 < diff < 0.05, f"bf16 differs from fp32 by {diff}: autocast off, or broken"


def test_out_of_memory_splits_the_batch_and_keeps_the_smaller_size(checkpoint):
    x = chips(8)
    ref = TorchPredictor(checkpoint, batch_size=8).predict(x)
    pred = TorchPredictor(checkpoint, batch_size=8)
    forward = pred._forward
    sizes = []

    def limited(batch):
        sizes.append(batch.shape[0])
        if batch.shape[0] > 2:
            raise torch.OutOfMemoryError("simulated: batch too large for the device")
        return forward(batch)

    pred._forward = limited
    np.testing.assert_allclose(pred.predict(x), ref, atol=1e-6)
    assert pred.batch_size == 2
    assert sizes[:3] == [8, 4, 2]
    sizes.clear()
    pred.predict(x)
    assert set(sizes) == {2}, "later calls start at the smaller batch"


def test_one_chip_that_does_not_fit_is_an_error(checkpoint):
    pred = TorchPredictor(checkpoint)

    def never(batch):
        raise torch.OutOfMemoryError("simulated")

    pred._forward = never
    with pytest.raises(ModelError, match="one chip does not fit"):
        pred.predict(chips(2))


def test_precision_choices_are_checked(checkpoint, tiny_model):
    with pytest.raises(OptionError, match="fp16 needs a CUDA device"):
        TorchPredictor(checkpoint, precision="fp16")
    with pytest.raises(OptionError, match="unknown"):
        TorchPredictor(checkpoint, precision="int3")
    with pytest.raises(OptionError, match="needs the torch backend"):
        load_predictor(tiny_model, precision="bf16")


@pytest.mark.gpu
def test_cuda_bf16_and_fp16_tags_agree_with_fp32(checkpoint):
    """On CUDA: reduced precision changes at most 0.5% of tag decisions."""
    x = chips(256, seed=2)
    fp32 = TorchPredictor(checkpoint, device="cuda")
    ref = fp32.predict(x) >= np.asarray(fp32.spec.thresholds)
    for precision in ("bf16", "fp16"):
        pred = TorchPredictor(checkpoint, device="cuda", precision=precision)
        tags = pred.predict(x) >= np.asarray(pred.spec.thresholds)
        assert (tags != ref).mean() <= 0.005, precision
