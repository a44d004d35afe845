"""The seam between the job and the backends: what a predictor declares, and running one asynchronously.

A :class:`Predictor` takes a uint8 batch ``(N, C, H, W)`` in the spec's band
order and returns float32 probabilities ``(N, L)`` in the spec's label order.
Each backend owns its device, precision and batching.  An
:class:`AsyncPredictor` (the torch backend) can also queue work on a GPU and
upload from memory the caller page-locks.  Device names (``"cpu"``,
``"cuda"``, ``"cuda:N"``, ``"auto"``) are checked here, in one place.

Nothing here imports a backend; backends import this module.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Iterator, Protocol, Sequence, runtime_checkable

import numpy as np

from scenetag.errors import ModelError, OptionError
from scenetag.model.spec import ModelSpec

log = logging.getLogger(__name__)

#: Device names a command accepts, besides ``cuda:N``.
DEVICES = ("auto", "cpu", "cuda")


@runtime_checkable
class Pending(Protocol):
    """Probabilities on their way."""

    def result(self) -> np.ndarray:
        """Wait for the probabilities, float32 ``(N, L)``."""
        ...

    def uploaded(self) -> None:
        """Wait until the batch's chips may be reused by the caller."""
        ...


@runtime_checkable
class Predictor(Protocol):
    """Probabilities from uint8 chips (every backend)."""

    spec: ModelSpec
    #: sha256 of the model file, for provenance.
    sha256: str
    #: Where the model came from.
    path: str
    #: Chips per call the backend prefers on its device (the job's default batch size).
    batch_size: int
    #: Where the model runs: "cpu" or "cuda:N" (or "cuda").
    device: str

    @property
    def on_gpu(self) -> bool:
        """Whether the model runs on a GPU."""
        ...

    def predict(self, chips: np.ndarray) -> np.ndarray:
        """uint8 ``(N, C, H, W)`` in spec band order → float32 ``(N, L)`` probabilities."""
        ...


@runtime_checkable
class AsyncPredictor(Predictor, Protocol):
    """A predictor that queues batches on its device and can upload from page-locked caller memory."""

    #: Seconds the GPU spent classifying so far (0 off the GPU).
    gpu_seconds: float

    def submit(self, parts: Sequence[np.ndarray], direct: bool = False) -> Pending:
        """Start classifying the chips of ``parts``; with ``direct`` they lie in registered memory."""
        ...

    def register_host(self, array: np.ndarray) -> bool:
        """Page-lock ``array`` for direct uploads; False where that can't be done."""
        ...

    def unregister_host(self, array: np.ndarray) -> None:
        """Undo :meth:`register_host` once every upload from ``array`` has finished."""
        ...


class Done:
    """A :class:`Pending` that is already done."""

    def __init__(self, probs: np.ndarray) -> None:
        self._probs = probs

    def result(self) -> np.ndarray:
        """The probabilities."""
        return self._probs

    def uploaded(self) -> None:
        """Nothing to wait for."""


class _Threaded:
    """A :class:`Pending` for a batch classified on a worker thread (its chips were copied first)."""

    def __init__(self, future: Future) -> None:
        self._future = future

    def result(self) -> np.ndarray:
        return self._future.result()

    def uploaded(self) -> None:
        """The chips were copied before submit returned."""


class Submitter:
    """Runs a predictor asynchronously, so the caller can prepare the next batch meanwhile.

    A predictor that queues its own work (:func:`queues_work`: the torch
    backend on CUDA, with pinned staging, upload on a copy stream and compute
    queued behind it; OpenVINO's infer requests on the CPU) submits itself.
    Any other predictor runs on one worker thread; the parts are copied into one
    batch on the caller's thread before :meth:`submit` returns, so the caller
    may reuse their memory at once in both cases.

    Inside :meth:`uploading_from` an asynchronous predictor that can page-lock
    the caller's memory uploads parts straight from it; :attr:`direct` is then
    True and the caller may reuse a part's memory only after
    :meth:`Pending.uploaded` on its batch.
    """

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        #: The predictor itself where it queues its own work, else None (a worker thread does).
        self._own: AsyncPredictor | None = predictor if queues_work(predictor) else None
        self._pool = None if self._own is not None else ThreadPoolExecutor(1, thread_name_prefix="inference")
        #: Whether parts are uploaded from the caller's memory (see :meth:`uploading_from`).
        self.direct = False

    @contextmanager
    def uploading_from(self, memory: np.ndarray) -> Iterator[bool]:
        """Within this block, parts that lie in ``memory`` go to the device without a host copy.

        Yields whether that is so: only an asynchronous predictor on a GPU does
        it, and only where the driver agrees.  ``memory`` must outlive the
        block; leaving it waits for every upload.
        """
        if self._own is None or not self._own.register_host(memory):
            yield False
            return
        self.direct = True
        try:
            yield True
        finally:
            self.direct = False
            self._own.unregister_host(memory)

    def submit(self, parts: Sequence[np.ndarray]) -> Pending:
        """Start classifying the chips of ``parts`` (uint8 ``(n_i, C, H, W)`` each), in order."""
        if self._own is not None:
            return self._own.submit(parts, direct=self.direct)
        return _Threaded(self._pool.submit(self.predictor.predict, np.concatenate(parts)))  # a copy, even of one part

    def close(self) -> None:
        """Wait for the worker thread, if any."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def __enter__(self) -> "Submitter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def queues_work(predictor: Predictor) -> bool:
    """Whether ``predictor.submit`` returns before its batch is classified, so no worker thread is needed.

    An :class:`AsyncPredictor` says so with a ``queues_work`` attribute
    (OpenVINO's infer requests on the CPU); without one, an asynchronous
    predictor queues work only on a GPU (the torch backend on CUDA; on the CPU it
    classifies inside ``submit``).
    """
    if not isinstance(predictor, AsyncPredictor):
        return False
    return bool(getattr(predictor, "queues_work", predictor.on_gpu))


def checked_probabilities(probs: np.ndarray, spec: ModelSpec, model: str) -> np.ndarray:
    """``probs`` as float32 ``(N, L)`` if every value is a finite probability in [0, 1]; else a :class:`ModelError`.

    Every backend passes its output through it before returning it, so
    ``run``, ``batch``, ``evaluate`` and ``calibrate`` all see checked
    probabilities: a NaN would be written as
    NULL and thresholded as "no", logits would be thresholded as if they were
    probabilities, and either would be recorded as a good result.
    ``model`` names the model in the message.
    """
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 2 or probs.shape[1] != spec.n_labels:
        raise ModelError(f"model {model!r} returned outputs of shape {probs.shape}, not (chips, "
                         f"{spec.n_labels}) for its {spec.n_labels} labels: check the model and its spec")
    finite = np.isfinite(probs)
    if not finite.all():
        bad = ~finite
        raise ModelError(
            f"model {model!r} returned {int(bad.sum())} non-finite probabilities in a batch of "
            f"{len(probs)} chips ({_example(probs, bad, spec)}): the model is broken (NaN or inf); "
            "re-export it and check it on a few chips before running it"
        )
    outside = (probs < 0.0) | (probs > 1.0)
    if outside.any():
        raise ModelError(
            f"model {model!r} returned {int(outside.sum())} values outside [0, 1] in a batch of "
            f"{len(probs)} chips ({_example(probs, outside, spec)}, range {float(probs.min()):.4g}.."
            f"{float(probs.max()):.4g}): the model probably returns logits; export it with a sigmoid "
            "on its output (`scenetag export` does)"
        )
    return probs


def _example(probs: np.ndarray, bad: np.ndarray, spec: ModelSpec) -> str:
    """'e.g. nan for 'cloudy'; labels affected: cloudy, haze' for the values ``bad`` marks."""
    row, col = (int(i[0]) for i in np.nonzero(bad))
    labels = [spec.labels[j] for j in np.flatnonzero(bad.any(axis=0))]
    shown = ", ".join(labels[:5]) + (f" and {len(labels) - 5} more" if len(labels) > 5 else "")
    return f"e.g. {float(probs[row, col])} for {spec.labels[col]!r}; labels affected: {shown}"


def check_device(device: str) -> str:
    """``device`` if it is "auto", "cpu", "cuda" or "cuda:N"; else an error naming the choices."""
    if device in DEVICES:
        return device
    if device.startswith("cuda:"):
        device_id(device)
        return device
    raise OptionError(f"--device {device!r} is unknown: use auto, cpu, cuda or cuda:N")


def device_id(device: str) -> int:
    """GPU index in ``device``: ``"cuda:1"`` → 1; ``"cuda"``, ``"auto"`` and ``"cpu"`` → 0."""
    if not device.startswith("cuda:"):
        return 0
    index = device[len("cuda:"):]
    if not index.isdigit():
        raise OptionError(f"--device {device!r} names no GPU index: use cuda, or cuda:N with N = 0, 1, ...")
    return int(index)


def is_gpu_device(device: str) -> bool:
    """Whether a resolved device name is a GPU ("cuda", "cuda:N")."""
    return device.startswith("cuda")
