"""Our checkpoints, plain state dicts and Lightning-style checkpoints; the torch backend."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scenetag.model.training.checkpoint import load_checkpoint, save_checkpoint, spec_path_for, strip_prefixes
from scenetag.hashing import file_sha256
from scenetag.model.backends import Predictor, create_predictor
from scenetag.model.spec import ModelSpec
from scenetag.model.backends.torch_backend import TorchPredictor
from scenetag.errors import ModelLoadError, ModelSpecError
from tests.model_fixtures import SMALL_ARCH, SMALL_LABELS, small_model, small_spec


class Arbitrary:
    """An arbitrary pickled object: weights_only=True must refuse to build it."""


def chips(n=3, size=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 3, size, size), dtype=np.uint8)


def same_outputs(a, b, x=None):
    x = torch.randn(2, 3, 64, 64) if x is None else x
    with torch.inference_mode():
        return torch.allclose(a.eval()(x), b.eval()(x), atol=1e-6)


def lightning_checkpoint(model, path, extra_keys=True):
    """What a LightningModule with ``self.model = net`` saves."""
    sd = {f"model.{k}": v for k, v in model.state_dict().items()}
    if extra_keys:
        sd["loss_fn.pos_weight"] = torch.ones(5)
    torch.save({"epoch": 7, "global_step": 700, "pytorch-lightning_version": "2.4.0", "state_dict": sd,
                "optimizer_states": [], "lr_schedulers": [], "hyper_parameters": {"lr": 0.001}}, path)
    return path


def test_round_trip_keeps_weights_spec_and_resume_state(tmp_path):
    spec = small_spec(thresholds=[0.1, 0.2, 0.3, 0.4, 0.5])
    model = small_model(spec)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    opt.step()
    path = save_checkpoint(tmp_path / "ckpt.pt", model, spec, epoch=4, optimizer=opt, best_score=0.5)
    assert ModelSpec.from_json(spec_path_for(path).read_text()) == spec
    loaded, got_spec, raw = load_checkpoint(path)
    assert got_spec == spec
    assert raw["epoch"] == 4 and raw["optimizer"]["state"]
    assert same_outputs(model, loaded)


def test_lightning_checkpoint_imports_with_options(tmp_path):
    model = small_model()
    path = lightning_checkpoint(model, tmp_path / "epoch=7.ckpt")
    loaded, spec, _ = load_checkpoint(path, arch=SMALL_ARCH, labels=SMALL_LABELS, thresholds=0.4)
    assert spec.labels == SMALL_LABELS and spec.thresholds == (0.4,) * 5 and spec.arch == SMALL_ARCH
    assert same_outputs(model, loaded)


def test_lightning_checkpoint_imports_with_spec(tmp_path):
    model = small_model()
    path = lightning_checkpoint(model, tmp_path / "last.ckpt")
    spec = small_spec(thresholds=[0.3] * 5)
    loaded, got, _ = load_checkpoint(path, spec=spec)
    assert got == spec
    assert same_outputs(model, loaded)


def test_foreign_checkpoint_without_spec_asks_for_one(tmp_path):
    path = lightning_checkpoint(small_model(), tmp_path / "x.ckpt")
    with pytest.raises(ModelSpecError, match="--spec"):
        load_checkpoint(path)


def test_class_count_mismatch_names_both_shapes(tmp_path):
    path = lightning_checkpoint(small_model(), tmp_path / "x.ckpt")
    with pytest.raises(ModelLoadError) as info:
        load_checkpoint(path, arch=SMALL_ARCH, labels=("a", "b", "c"))
    msg = str(info.value)
    assert "5 classes" in msg and "3 labels" in msg
    assert "(5, 1024)" in msg and "(3, 1024)" in msg


def test_arch_mismatch_is_refused(tmp_path):
    path = lightning_checkpoint(small_model(), tmp_path / "x.ckpt")
    with pytest.raises(ModelLoadError, match="resnet18"):
        load_checkpoint(path, arch="resnet18", labels=SMALL_LABELS)


def test_plain_state_dict_with_wrapper_prefixes(tmp_path):
    model = small_model()
    sd = {f"module._orig_mod.{k}": v for k, v in model.state_dict().items()}
    torch.save(sd, tmp_path / "plain.pth")
    loaded, _, _ = load_checkpoint(tmp_path / "plain.pth", spec=small_spec())
    assert same_outputs(model, loaded)


def test_strip_prefixes_drops_non_network_keys():
    out = strip_prefixes({"model.a": 1, "model.b": 2, "criterion.w": 3})
    assert out == {"a": 1, "b": 2}


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": small_model().state_dict(), "obj": Arbitrary()}, path)
    with pytest.raises(ModelLoadError, match="weights_only"):
        load_checkpoint(path, spec=small_spec())


def test_missing_checkpoint(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_torch_predictor_implements_protocol(tmp_path):
    spec = small_spec()
    model = small_model(spec)
    path = save_checkpoint(tmp_path / "m.pt", model, spec)
    pred = create_predictor(path)
    assert isinstance(pred, TorchPredictor) and isinstance(pred, Predictor)
    assert pred.sha256 == file_sha256(path) and pred.path == str(path) and pred.spec == spec
    x = chips()
    probs = pred.predict(x)
    assert probs.dtype == np.float32 and probs.shape == (3, 5)
    assert ((probs > 0) & (probs < 1)).all()
    from scenetag.model.preprocess import normalize

    with torch.inference_mode():
        ref = torch.sigmoid(model(torch.from_numpy(normalize(x, spec)))).numpy()
    np.testing.assert_allclose(probs, ref, atol=1e-6)


def test_torch_predictor_refuses_wrong_band_count(tmp_path):
    spec = small_spec()
    path = save_checkpoint(tmp_path / "m.pt", small_model(spec), spec)
    with pytest.raises(ModelLoadError, match="4, 64, 64"):
        TorchPredictor(path).predict(np.zeros((1, 4, 64, 64), np.uint8))


def test_torch_predictor_loads_lightning_with_spec(tmp_path):
    model = small_model()
    path = lightning_checkpoint(model, tmp_path / "l.ckpt")
    pred = create_predictor(path, spec=small_spec())
    assert pred.predict(chips(2)).shape == (2, 5)
