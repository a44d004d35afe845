"""The torch backend's precision, batching and out-of-memory handling (CPU here; CUDA where marked)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from scenetag.model.training.checkpoint import save_checkpoint  # noqa: E402
from scenetag.model.backends import Done, create_predictor  # noqa: E402
from scenetag.model.backends.torch_backend import TorchPredictor, resolve_device  # noqa: E402
from scenetag.errors import ModelError, OptionError  # noqa: E402
from tests.model_fixtures import small_model, tiny_spec  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    spec = tiny_spec()
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "m.pt", small_model(spec, seed=1), spec)


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


def test_device_names_are_checked():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(OptionError, match="cuda:N"):  # the same check as the ONNX backend's
        resolve_device("cuda:x")


def test_precision_choices_are_checked(checkpoint, tiny_model):
    with pytest.raises(OptionError, match="fp16 needs a CUDA device"):
        TorchPredictor(checkpoint, precision="fp16")
    with pytest.raises(OptionError, match="unknown"):
        TorchPredictor(checkpoint, precision="int3")
    with pytest.raises(OptionError, match="needs the torch backend"):
        create_predictor(tiny_model, precision="bf16")


@pytest.mark.gpu
def test_cuda_bf16_and_fp16_tags_agree_with_fp32_on_real_chips():
    """Issue 6's accuracy check: reduced precision changes at most 0.5% of tag decisions.

    On the real Planet chips with the trained default checkpoint (``scripts/train_default.sh``
    writes it to out/default/calibrated.pt; or set SCENETAG_CHECKPOINT).
    """
    import os
    from pathlib import Path

    from PIL import Image

    from tests.conftest import CHIPS, ROOT

    ckpt = Path(os.environ.get("SCENETAG_CHECKPOINT", ROOT / "out" / "default" / "calibrated.pt"))
    if not ckpt.exists():
        pytest.skip(f"no trained checkpoint at {ckpt} (run scripts/train_default.sh or set SCENETAG_CHECKPOINT)")
    files = sorted((CHIPS / "images").glob("*.jpg"))
    if not files:
        pytest.skip(f"no Planet chips under {CHIPS}")
    x = np.stack([np.asarray(Image.open(f).convert("RGB")).transpose(2, 0, 1) for f in files])
    fp32 = TorchPredictor(ckpt, device="cuda")
    thr = np.asarray(fp32.spec.thresholds, np.float32)
    ref = fp32.predict(x) >= thr
    for precision in ("bf16", "fp16"):
        tags = TorchPredictor(ckpt, device="cuda", precision=precision).predict(x) >= thr
        assert (tags != ref).mean() <= 0.005, precision


@pytest.mark.gpu
@pytest.mark.parametrize("device, precision, dtype", [
    ("cuda", "bf16", torch.bfloat16), ("cuda:0", "fp16", torch.float16),
])
def test_cuda_reduced_precision_runs_under_autocast(checkpoint, device, precision, dtype):
    """The convolutions run in the reduced dtype on the GPU (autocast keyed on the device type)."""
    x = chips(16, seed=6)
    ref = TorchPredictor(checkpoint).predict(x)
    pred = TorchPredictor(checkpoint, device=device, precision=precision)
    conv = next(m for m in pred.model.modules() if isinstance(m, torch.nn.Conv2d))
    seen = []
    conv.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    got = pred.predict(x)
    assert seen and set(seen) == {dtype}
    assert got.dtype == np.float32 and got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=0.05)


def test_submit_on_the_cpu_is_done_at_once(checkpoint):
    predictor = TorchPredictor(checkpoint)
    x = chips(5, seed=4)
    pending = predictor.submit([x[:2], x[2:]])
    assert isinstance(pending, Done)
    np.testing.assert_allclose(pending.result(), predictor.predict(x), atol=1e-6)


def test_cpu_memory_is_not_page_locked_and_parts_are_copied(checkpoint):
    from scenetag.model.backends import Submitter

    predictor = TorchPredictor(checkpoint)
    x = chips(3, seed=6)
    assert predictor.register_host(x) is False
    with Submitter(predictor) as sub, sub.uploading_from(x) as direct:
        assert direct is False and sub.direct is False
        np.testing.assert_allclose(sub.submit([x]).result(), predictor.predict(x), atol=1e-6)


@pytest.mark.gpu
def test_cuda_direct_upload_from_page_locked_shared_memory(checkpoint):
    """Chips uploaded straight from registered shared memory (as the reader slots are), then reused."""
    from multiprocessing.shared_memory import SharedMemory

    x = chips(22, seed=7)
    ref = TorchPredictor(checkpoint).predict(x)
    gpu = TorchPredictor(checkpoint, device="cuda", batch_size=4)
    shm = SharedMemory(create=True, size=x.nbytes)
    try:
        memory = np.ndarray(x.shape, np.uint8, buffer=shm.buf)
        memory[:] = x
        assert gpu.register_host(memory)
        pending = [gpu.submit([memory[i:i + 3], memory[i + 3:i + 4]], direct=True) for i in range(0, 20, 4)]
        pending.append(gpu.submit([memory[20:]], direct=True))
        for p in pending:
            p.uploaded()
        memory[:] = 0  # reused once uploaded: the results must not change
        got = np.concatenate([p.result() for p in pending])
        gpu.unregister_host(memory)
        del memory
    finally:
        shm.close()
        shm.unlink()
    np.testing.assert_allclose(got, ref, atol=2e-3)


def test_cuda_graphs_are_ignored_off_cuda(checkpoint):
    x = chips(9, seed=8)
    graphed = TorchPredictor(checkpoint, batch_size=4, cuda_graphs=True)
    assert graphed.cuda_graphs is False
    np.testing.assert_allclose(graphed.predict(x), TorchPredictor(checkpoint).predict(x), atol=1e-6)


def test_graphs_are_captured_for_the_first_two_shapes_that_repeat(checkpoint, monkeypatch):
    """The graph cache's bookkeeping, with a stand-in for CUDA capture (a graph that re-runs the forward)."""
    from scenetag.model.backends import torch_backend

    pred = TorchPredictor(checkpoint)
    captured = []

    class Replay:
        def __init__(self, static_in, static_out):
            self.static_in, self.static_out = static_in, static_out

        def replay(self):
            self.static_out.copy_(pred._forward(self.static_in))

    def capture(x):
        captured.append(x.shape[0])
        static_in = x.clone()
        static_out = torch.zeros((x.shape[0], pred.spec.n_labels))  # written by replays only
        return Replay(static_in, static_out), static_in, static_out

    monkeypatch.setattr(pred, "_capture", capture)
    assert torch_backend.GRAPHS == 2
    x = torch.from_numpy(chips(40, seed=9))
    start = 0
    with torch.inference_mode():
        for n in (4, 4, 4, 1, 2, 2, 4, 3, 3, 2):  # new chips every call: a replay must read them
            batch = x[start:start + n]
            start += n
            torch.testing.assert_close(pred._graphed(batch), pred._forward(batch))
    assert captured == [4, 2]  # a shape is captured on its second sighting; 3, a third shape, runs eagerly
    assert [k[0] for k in pred._graphs] == [4, 2]


def test_a_batch_larger_than_the_batch_size_runs_in_chunks_each_with_its_own_output(checkpoint, monkeypatch):
    """After an OOM split the batch size shrinks: a larger batch is cut, and graph replays don't share output."""
    pred = TorchPredictor(checkpoint, batch_size=4)
    pred.cuda_graphs = True
    shared = {}

    class Replay:
        def replay(self):
            shared["out"].copy_(pred._forward(shared["in"]))

    def capture(x):
        shared["in"], shared["out"] = x.clone(), torch.zeros((x.shape[0], pred.spec.n_labels))
        return Replay(), shared["in"], shared["out"]

    monkeypatch.setattr(pred, "_capture", capture)
    calls = []
    run = pred._run
    monkeypatch.setattr(pred, "_run", lambda x: calls.append(len(x)) or run(x))
    x = torch.from_numpy(chips(14, seed=11))
    with torch.inference_mode():
        got = pred._infer(x)  # chunks of 4, 4 (captured), 4 (replayed), 2
        torch.testing.assert_close(got, pred._forward(x), atol=1e-5, rtol=1e-5)
    assert calls == [4, 2] and list(pred._graphs) == [(4, 3, 64, 64)]


def test_a_failed_capture_turns_graphs_off_and_runs_eagerly(checkpoint, monkeypatch):
    pred = TorchPredictor(checkpoint)
    pred.cuda_graphs = True

    def capture(x):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(pred, "_capture", capture)
    x = torch.from_numpy(chips(3, seed=10))
    with torch.inference_mode():
        pred._graphed(x)
        torch.testing.assert_close(pred._graphed(x), pred._forward(x))
    assert pred.cuda_graphs is False and not pred._graphs


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_graphs_give_the_eager_probabilities(checkpoint, precision):
    """Repeating batches replayed from a captured graph (over more than a lap of the ring), a short one eager."""
    x = chips(21, seed=8)
    eager = TorchPredictor(checkpoint, device="cuda", batch_size=4, precision=precision, cuda_graphs=False)
    graphed = TorchPredictor(checkpoint, device="cuda", batch_size=4, precision=precision)  # graphs by default
    ref = eager.predict(x)
    assert not eager.cuda_graphs and not eager._graphs
    got = graphed.predict(x)
    assert graphed.cuda_graphs and list(graphed._graphs) == [(4, 3, 64, 64)]  # the single chip ran eagerly
    np.testing.assert_allclose(got, ref, atol=5e-3)
    np.testing.assert_allclose(graphed.predict(x[::-1].copy()), ref[::-1], atol=5e-3)  # replays read new input


@pytest.mark.gpu
def test_cuda_submit_ring_gives_the_cpu_probabilities(checkpoint):
    """Many batches through the ring of pinned buffers (reused ones read out first), against the CPU."""
    x = chips(45, seed=5)
    ref = TorchPredictor(checkpoint).predict(x)
    gpu = TorchPredictor(checkpoint, device="cuda", batch_size=4)
    pending = [gpu.submit([x[i:i + 2], x[i + 2:i + 4]]) for i in range(0, 44, 4)]
    pending.append(gpu.submit([x[44:]]))
    got = np.concatenate([p.result() for p in pending])
    np.testing.assert_allclose(got, ref, atol=2e-3)  # TF32 convolutions on CUDA
    np.testing.assert_allclose(gpu.predict(x), ref, atol=2e-3)
    assert gpu.gpu_seconds > 0
