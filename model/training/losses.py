"""Multi-label losses on logits: BCE, class-weighted BCE, focal and asymmetric (ASL).

Every loss takes logits ``(N, L)`` and 0/1 targets ``(N, L)`` and returns the
mean over all elements, so values are comparable across losses and batch sizes.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from scenetag.errors import ModelSpecError

LOSSES = ("bce", "wbce-inv", "wbce-sqrt", "focal", "asl")


def class_weights(positives: Sequence[int] | np.ndarray, n: int, mode: str = "sqrt", cap: float = 10.0) -> np.ndarray:
    """Per-class positive weights from label frequency.

    ``mode="inv"`` gives ``(n - p) / p`` (the negatives-to-positives ratio, so
    each class's positives weigh as much as its negatives); ``"sqrt"`` its
    square root.  Classes with no positives get weight 1, and weights are
    capped at ``cap`` so a label seen once does not dominate.
    """
    p = np.asarray(positives, dtype=np.float64)
    if mode not in ("inv", "sqrt"):
        raise ModelSpecError(f"class weight mode {mode!r} is unknown: use 'inv' or 'sqrt'")
    ratio = np.where(p > 0, (n - p) / np.maximum(p, 1), 1.0)
    ratio = np.maximum(ratio, 1e-3)
    w = ratio if mode == "inv" else np.sqrt(ratio)
    return np.minimum(w, cap).astype(np.float32)


class WeightedBCE(nn.Module):
    """BCE with a per-class weight on the positive term (``pos_weight``)."""

    def __init__(self, pos_weight: Sequence[float] | np.ndarray | None = None):
        super().__init__()
        pw = None if pos_weight is None else torch.as_tensor(np.asarray(pos_weight), dtype=torch.float32)
        self.register_buffer("pos_weight", pw)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), pos_weight=self.pos_weight)


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): ``-a_t (1 - p_t)^gamma log p_t``.

    ``alpha`` weighs positives (``alpha``) against negatives (``1 - alpha``);
    ``alpha=None`` weighs both 1.
    """

    def __init__(self, gamma: float = 2.0, alpha: float | None = 0.25):
        super().__init__()
        if gamma < 0:
            raise ModelSpecError(f"focal gamma must be >= 0, got {gamma}")
        if alpha is not None and not 0 <= alpha <= 1:
            raise ModelSpecError(f"focal alpha must lie in [0, 1] or be None, got {alpha}")
        self.gamma = float(gamma)
        self.alpha = alpha

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = logits.float(), targets.float()
        ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        p = torch.sigmoid(logits)
        p_t = p * targets + (1 - p) * (1 - targets)
        loss = ce * (1 - p_t) ** self.gamma
        if self.alpha is not None:
            loss = loss * (self.alpha * targets + (1 - self.alpha) * (1 - targets))
        return loss.mean()


class AsymmetricLoss(nn.Module):
    """Asymmetric loss (Ridnik et al. 2021, ASL).

    Positives: ``-(1 - p)^gamma_pos log p``.  Negatives use the shifted
    probability ``p_m = max(p - clip, 0)``: ``-p_m^gamma_neg log(1 - p_m)``,
    so easy negatives (``p < clip``) cost nothing.
    """

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05, eps: float = 1e-8):
        super().__init__()
        if gamma_neg < 0 or gamma_pos < 0:
            raise ModelSpecError(f"ASL gammas must be >= 0, got gamma_neg={gamma_neg}, gamma_pos={gamma_pos}")
        if not 0 <= clip < 1:
            raise ModelSpecError(f"ASL clip must lie in [0, 1), got {clip}")
        self.gamma_neg, self.gamma_pos, self.clip, self.eps = gamma_neg, gamma_pos, clip, eps

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = logits.float(), targets.float()
        p = torch.sigmoid(logits)
        p_m = (p - self.clip).clamp(min=0) if self.clip > 0 else p
        loss_pos = targets * torch.log(p.clamp(min=self.eps)) * (1 - p) ** self.gamma_pos
        loss_neg = (1 - targets) * torch.log((1 - p_m).clamp(min=self.eps)) * p_m ** self.gamma_neg
        return -(loss_pos + loss_neg).mean()


def make_loss(
    name: str,
    positives: Sequence[int] | np.ndarray | None = None,
    n: int | None = None,
    gamma: float = 2.0,
    alpha: float | None = 0.25,
    gamma_neg: float = 4.0,
    gamma_pos: float = 0.0,
    clip: float = 0.05,
) -> nn.Module:
    """A loss by name: "bce", "wbce-inv", "wbce-sqrt", "focal" or "asl".

    The weighted BCEs need the training positives per class and the number of
    training images.
    """
    if name == "bce":
        return WeightedBCE(None)
    if name in ("wbce-inv", "wbce-sqrt"):
        if positives is None or n is None:
            raise ModelSpecError(f"loss {name!r} needs the positives per class and the image count")
        return WeightedBCE(class_weights(positives, n, mode=name.split("-")[1]))
    if name == "focal":
        return FocalLoss(gamma=gamma, alpha=alpha)
    if name == "asl":
        return AsymmetricLoss(gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip)
    raise ModelSpecError(f"loss {name!r} is unknown: use one of {LOSSES}")
