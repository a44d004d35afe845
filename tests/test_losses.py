"""Each loss against values worked out by hand.

The two-element case used throughout: a positive with logit 0 (p = 0.5) and
a negative with logit 2 (p = 0.880797).  -log(0.5) = 0.693147 and
-log(1 - 0.880797) = log(1 + e^2) = 2.126928.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scenetag.model.training.losses import AsymmetricLoss, FocalLoss, WeightedBCE, class_weights, make_loss
from scenetag.errors import ModelSpecError

LOGITS = torch.tensor([[0.0, 2.0]])
TARGETS = torch.tensor([[1.0, 0.0]])


def test_bce_hand_value():
    # (0.693147 + 2.126928) / 2
    assert make_loss("bce")(LOGITS, TARGETS).item() == pytest.approx(1.410038, abs=1e-6)


def test_weighted_bce_scales_the_positive_term():
    # (3 * 0.693147 + 2.126928) / 2: pos_weight only touches positives
    loss = WeightedBCE([3.0, 1.0])(LOGITS, TARGETS)
    assert loss.item() == pytest.approx(2.103185, abs=1e-6)


@pytest.mark.parametrize("mode, expected", [("inv", [4.0, 0.25, 1.0]), ("sqrt", [2.0, 0.5, 1.0])])
def test_class_weights(mode, expected):
    # 5 images; label 0 has 1 positive (4 negatives), label 1 has 4, label 2 none (weight 1).
    np.testing.assert_allclose(class_weights([1, 4, 0], 5, mode), expected, rtol=1e-6)


def test_class_weights_are_capped():
    assert class_weights([1], 1001, "inv", cap=10.0)[0] == pytest.approx(10.0)


def test_weighted_bce_from_training_counts():
    loss = make_loss("wbce-inv", positives=[1, 4], n=5)
    # pos_weight [4, 0.25]: (4 * 0.693147 + 2.126928) / 2
    assert loss(LOGITS, TARGETS).item() == pytest.approx((4 * 0.693147 + 2.126928) / 2, abs=1e-5)


def test_focal_hand_value():
    # positive: 0.25 * (1 - 0.5)^2 * 0.693147 = 0.043322
    # negative: 0.75 * 0.880797^2 * 2.126928 = 1.237558
    loss = FocalLoss(gamma=2.0, alpha=0.25)(LOGITS, TARGETS)
    assert loss.item() == pytest.approx((0.043322 + 1.237558) / 2, abs=1e-5)


def test_focal_gamma1_no_alpha_hand_value():
    # positive: 0.5 * 0.693147; negative: 0.880797 * 2.126928
    loss = FocalLoss(gamma=1.0, alpha=None)(LOGITS, TARGETS)
    assert loss.item() == pytest.approx((0.346574 + 1.873387) / 2, abs=1e-5)


def test_focal_gamma0_is_bce():
    x, y = torch.randn(8, 5), (torch.rand(8, 5) > 0.5).float()
    assert FocalLoss(0.0, None)(x, y).item() == pytest.approx(make_loss("bce")(x, y).item(), rel=1e-6)


def test_asl_hand_value():
    # positive (gamma_pos 0): 0.693147
    # negative: p_m = 0.880797 - 0.05 = 0.830797; 0.830797^4 * -log(1 - 0.830797) = 0.476409 * 1.776657
    loss = AsymmetricLoss(gamma_neg=4, gamma_pos=0, clip=0.05)(LOGITS, TARGETS)
    assert loss.item() == pytest.approx((0.693147 + 0.476409 * 1.776657) / 2, abs=1e-5)


def test_asl_discards_easy_negatives():
    # p = sigmoid(-4) = 0.018 < clip 0.05: the negative costs nothing
    loss = AsymmetricLoss(clip=0.05)(torch.tensor([[-4.0]]), torch.tensor([[0.0]]))
    assert loss.item() == 0.0


def test_asl_without_focusing_or_clip_is_bce():
    x, y = torch.randn(8, 5), (torch.rand(8, 5) > 0.5).float()
    got = AsymmetricLoss(gamma_neg=0, gamma_pos=0, clip=0)(x, y).item()
    assert got == pytest.approx(make_loss("bce")(x, y).item(), rel=1e-5)


def test_losses_have_gradients():
    for name in ("bce", "focal", "asl"):
        x = torch.zeros(2, 3, requires_grad=True)
        make_loss(name)(x, torch.ones(2, 3)).backward()
        assert x.grad is not None and (x.grad < 0).all(), name


@pytest.mark.parametrize("bad", [dict(name="hinge"), dict(name="wbce-inv"), dict(name="focal", gamma=-1)])
def test_bad_loss_settings(bad):
    with pytest.raises(ModelSpecError):
        make_loss(**bad)
