"""The predictor interface that every backend implements, and backend selection.

A predictor takes a uint8 batch ``(N, C, H, W)`` in the spec's band order and
returns float32 probabilities ``(N, L)`` in the spec's label order.  Each
backend owns its device, precision and batching; both read a device name
(``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"auto"``) through :func:`device_id`.
:func:`load_predictor` picks a backend by name or, with ``"auto"``, by the
model file's suffix.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Protocol, Sequence, runtime_checkable

import numpy as np

from scenetag.model.spec import ModelSpec
from scenetag.errors import ModelLoadError, OptionError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "onnx", "torch")
#: ONNX Runtime's GPU execution providers, in order of preference.
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
TORCH_SUFFIXES = (".pt", ".pth", ".ckpt")


@runtime_checkable
class Predictor(Protocol):
    """Probabilities from uint8 chips."""

    spec: ModelSpec
    #: sha256 of the model file, for provenance.
    sha256: str
    #: Where the model came from.
    path: str
    #: Chips per call the backend prefers on its device (the job's default batch size).
    batch_size: int

    def predict(self, chips: np.ndarray) -> np.ndarray:
        """uint8 ``(N, C, H, W)`` in spec band order → float32 ``(N, L)`` probabilities."""
        ...


class Pending(Protocol):
    """Probabilities on their way: :meth:`result` waits for them."""

    def result(self) -> np.ndarray:
        ...


class Done:
    """A :class:`Pending` that is already done."""

    def __init__(self, probs: np.ndarray) -> None:
        self._probs = probs

    def result(self) -> np.ndarray:
        return self._probs


class Submitter:
    """Runs a predictor asynchronously, so the caller can prepare the next batch meanwhile.

    A backend on a GPU with its own ``submit(parts)`` (the torch backend on
    CUDA: pinned staging, upload on a copy stream, compute queued behind it)
    is used as is.
    Any other backend runs on one worker thread; the parts are copied into one
    batch on the caller's thread before :meth:`submit` returns, so the caller
    may reuse their memory at once in both cases.

    Inside :meth:`uploading_from` a backend that can page-lock the caller's
    memory (``register_host``) uploads parts straight from it; :attr:`direct`
    is then True and the caller may reuse a part's memory only after
    :meth:`wait_uploaded` on its batch.
    """

    def __init__(self, predictor: "Predictor") -> None:
        self.predictor = predictor
        self._own: Callable[..., Pending] | None = getattr(predictor, "submit", None) if on_gpu(predictor) else None
        self._pool = None if self._own else ThreadPoolExecutor(1, thread_name_prefix="inference")
        #: Whether parts are uploaded from the caller's memory (see :meth:`uploading_from`).
        self.direct = False

    @contextmanager
    def uploading_from(self, memory: np.ndarray) -> Iterator[bool]:
        """Within this block, parts that lie in ``memory`` go to the device without a host copy.

        Yields whether that is so: only a backend with ``register_host`` (the
        torch backend on CUDA) does it, and only where the driver agrees.
        ``memory`` must outlive the block; leaving it waits for every upload.
        """
        register = getattr(self.predictor, "register_host", None) if self._own is not None else None
        if register is None or not register(memory):
            yield False
            return
        self.direct = True
        try:
            yield True
        finally:
            self.direct = False
            self.predictor.unregister_host(memory)

    def submit(self, parts: Sequence[np.ndarray]) -> Pending:
        """Start classifying the chips of ``parts`` (uint8 ``(n_i, C, H, W)`` each), in order."""
        if self._own is not None:
            return self._own(parts, direct=self.direct)
        return self._pool.submit(self.predictor.predict, np.concatenate(parts))  # a copy, even of one part

    @staticmethod
    def wait_uploaded(pending: Pending) -> None:
        """Wait until the parts of ``pending``'s batch may be reused (at once unless :attr:`direct`)."""
        uploaded = getattr(pending, "uploaded", None)
        if uploaded is not None:
            uploaded()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def __enter__(self) -> "Submitter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def on_gpu(predictor: object) -> bool:
    """Whether the predictor runs on a GPU (torch on CUDA, or ORT's CUDA/TensorRT providers)."""
    device = str(getattr(predictor, "device", ""))
    providers = getattr(predictor, "providers", None) or ()
    return device.startswith("cuda") or (bool(providers) and providers[0] in GPU_PROVIDERS)


def device_id(device: str) -> int:
    """GPU index in ``device``: ``"cuda:1"`` → 1; ``"cuda"``, ``"auto"`` and ``"cpu"`` → 0."""
    if not device.startswith("cuda:"):
        return 0
    index = device[len("cuda:"):]
    if not index.isdigit():
        raise OptionError(f"--device {device!r} names no GPU index: use cuda, or cuda:N with N = 0, 1, ...")
    return int(index)


def load_predictor(
    path: str | Path,
    backend: str = "auto",
    device: str = "cpu",
    spec: ModelSpec | None = None,
    precision: str = "fp32",
) -> Predictor:
    """Load a model file as a :class:`Predictor`.

    Args:
        path: ONNX file or torch checkpoint.
        backend: "onnx", "torch" or "auto" (by suffix).
        device: "cpu", "cuda", "cuda:N" or "auto".
        spec: A spec that replaces (or supplies) the one stored with the model.
        precision: "fp32", "bf16" or "fp16"; only the torch backend runs below fp32.
    """
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"model {str(path)!r} does not exist: pass --model PATH to an .onnx file")
    if not path.is_file():
        raise ModelLoadError(f"model {str(path)!r} is not a file")
    if backend not in BACKENDS:
        raise ModelLoadError(f"backend {backend!r} is unknown: use one of {BACKENDS}")
    if backend == "auto":
        backend = "torch" if path.suffix.lower() in TORCH_SUFFIXES else "onnx"
    if backend == "onnx":
        if precision != "fp32":
            raise OptionError(
                f"--precision {precision} needs the torch backend: ONNX Runtime runs a model in the "
                "precision it was exported in (pass a checkpoint with --backend torch)"
            )
        from scenetag.model.onnx_backend import OnnxPredictor

        return OnnxPredictor(path, device=device, spec=spec)
    from scenetag.model.torch_backend import TorchPredictor

    return TorchPredictor(path, device=device, spec=spec, precision=precision)
