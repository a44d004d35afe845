"""Test-time augmentation over any :class:`~scenetag.model.backends.base.Predictor`.

:func:`with_tta` is the one place a predictor gets its TTA (the spec's, or
another for one run).  A backend that can expand the batch on its own device
says so with ``applies_tta = True`` and reads ``spec.tta`` itself (the torch
backend: :func:`scenetag.model.tta.views` on the device tensor).  Any other
backend is wrapped in a :class:`TTAPredictor`, which expands the batch that was
already read, in numpy, and averages the probabilities of its views: the
chips are read once whatever the mode.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import numpy as np

from scenetag.model.backends.base import Predictor
from scenetag.model.spec import ModelSpec
from scenetag.model.tta import average, n_views, views

log = logging.getLogger(__name__)

#: Attributes a :class:`TTAPredictor` never passes through: the asynchronous path would bypass the views.
_NOT_DELEGATED = frozenset({"submit", "register_host", "unregister_host", "gpu_seconds"})


class TTAPredictor:
    """``inner``'s probabilities averaged over the dihedral views of ``spec.tta`` (a :class:`Predictor`)."""

    #: It reads ``spec.tta`` at each call, so :func:`with_tta` only has to set the spec.
    applies_tta = True

    def __init__(self, inner: Predictor, spec: ModelSpec) -> None:
        self.inner = inner
        #: The spec the job sees: the inner model's, with the TTA this wrapper applies.
        self.spec = spec

    @property
    def sha256(self) -> str:
        return self.inner.sha256

    @property
    def path(self) -> str:
        return self.inner.path

    @property
    def batch_size(self) -> int:
        return self.inner.batch_size

    @property
    def device(self) -> str:
        return self.inner.device

    @property
    def on_gpu(self) -> bool:
        return self.inner.on_gpu

    def predict(self, chips: np.ndarray) -> np.ndarray:
        """uint8 ``(N, C, H, W)`` → float32 ``(N, L)``: the mean over the views of each chip."""
        chips = np.asarray(chips)
        if len(chips) == 0 or self.spec.tta == "none":
            return self.inner.predict(chips)
        probs = self.inner.predict(np.ascontiguousarray(views(chips, self.spec.tta)))
        return np.ascontiguousarray(average(probs, self.spec.tta), dtype=np.float32)

    def __getattr__(self, name: str) -> Any:
        # Everything else (the torch network, the precision...) is the inner predictor's.
        if name in _NOT_DELEGATED or name.startswith("__") or name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


def with_tta(predictor: Predictor, tta: str | None = None) -> Predictor:
    """``predictor`` averaging over the views of ``tta`` (default: its spec's TTA, the one its thresholds were fitted with).

    A ``tta`` other than the spec's is allowed, with a warning: the thresholds
    were fitted on probabilities made another way.  The returned predictor's
    spec records the TTA it applies.
    """
    spec = predictor.spec
    mode = spec.tta if tta is None else tta
    n_views(mode)  # an unknown mode is refused here
    if mode != spec.tta:
        log.warning("--tta %s: the thresholds of %s were fitted with TTA %r, not %r; its tags may be off "
                    "(calibrate it with --tta %s)", mode, spec.name, spec.tta, mode, mode)
        spec = replace(spec, tta=mode)
    if getattr(predictor, "applies_tta", False):
        predictor.spec = spec  # the backend expands the batch on its device by spec.tta
        return predictor
    if mode == "none":
        if spec is not predictor.spec:
            predictor.spec = spec
        return predictor
    return TTAPredictor(predictor, spec)
