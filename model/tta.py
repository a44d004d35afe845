"""Test-time augmentation: the dihedral views of a batch of chips, and their average.

A chip's labels do not change when it is flipped or turned by 90°, so the
mean of the probabilities over several such views is a steadier estimate than
one view.  ``"flips"`` takes 2 views (as is, left-right mirrored), ``"d4"`` all 8
of the dihedral group (4 rotations, each also mirrored).  The views are made
from the batch already in memory (numpy on the host or torch on the device),
never by reading a chip again; both array kinds go through the same functions.
"""

from __future__ import annotations

from typing import Any

#: TTA modes and their number of views.
TTA_VIEWS = {"none": 1, "flips": 2, "d4": 8}
TTA_MODES = tuple(TTA_VIEWS)


def n_views(mode: str) -> int:
    """Views of ``mode`` ("none" 1, "flips" 2, "d4" 8)."""
    try:
        return TTA_VIEWS[mode]
    except KeyError:
        from scenetag.errors import OptionError

        raise OptionError(f"--tta {mode!r} is unknown: use one of {', '.join(TTA_MODES)}") from None


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def _rot90(x: Any, k: int) -> Any:
    if _is_torch(x):
        import torch

        return torch.rot90(x, k, dims=(-2, -1))
    import numpy as np

    return np.rot90(x, k, axes=(-2, -1))


def _flip(x: Any) -> Any:
    if _is_torch(x):
        import torch

        return torch.flip(x, dims=(-1,))
    import numpy as np

    return np.flip(x, axis=-1)


def views(batch: Any, mode: str) -> Any:
    """The ``n_views(mode)`` views of an ``(N, C, H, W)`` batch, stacked view-major as ``(V * N, C, H, W)``.

    Works on numpy arrays and torch tensors alike; square chips keep their
    shape under rotation (``"d4"`` needs H == W).
    """
    n = n_views(mode)
    if n == 1:
        return batch
    if n == 8 and batch.shape[-1] != batch.shape[-2]:
        from scenetag.errors import OptionError

        raise OptionError(f"--tta d4 needs square chips, got {batch.shape[-2]} x {batch.shape[-1]}: use --tta flips")
    out = [batch, _flip(batch)]
    if n == 8:
        for k in (1, 2, 3):
            turned = _rot90(batch, k)
            out += [turned, _flip(turned)]
    if _is_torch(batch):
        import torch

        return torch.cat([v.contiguous() for v in out])
    import numpy as np

    return np.concatenate(out)


def average(probs: Any, mode: str) -> Any:
    """Mean over the views of ``(V * N, L)`` probabilities made from :func:`views` → ``(N, L)``."""
    n = n_views(mode)
    if n == 1:
        return probs
    return probs.reshape(n, -1, probs.shape[-1]).mean(0)
