"""OpenVINO backend: the same ONNX file and spec as ONNX Runtime, on OpenVINO's CPU plugin.

* The ONNX file is read as is (OpenVINO keeps its ``metadata_props``, so the
  spec comes with it); an INT8 model from ``scenetag quantize`` (QuantizeLinear /
  DequantizeLinear pairs) runs on OpenVINO's INT8 kernels.
* Normalisation is compiled into the graph (``PrePostProcessor``): the model
  takes the uint8 chips as they are read, so a batch crosses into OpenVINO at
  one byte per pixel and no float copy is made in numpy.
* Batches run on an ``AsyncInferQueue`` of infer requests: :meth:`OpenVinoPredictor.submit`
  returns at once, so the caller reads and gathers the next batch while this
  one runs, without a thread pool of ours (OpenVINO's requests run on its own
  threads, outside the GIL).
* Threads, performance hint, infer requests and batch size are the backend's
  choice, from measurements on a 2-core CPU (docs/performance.md, "OpenVINO").

The output goes through :func:`~scenetag.model.backends.base.checked_probabilities`
as every backend's does.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from pathlib import Path
from typing import Sequence

import numpy as np

from scenetag.errors import ModelError, ModelLoadError, ModelSpecError, OptionError, require
from scenetag.hashing import model_sha256
from scenetag.processes import at_exit
from scenetag.model.backends.base import Done, checked_probabilities, is_gpu_device
from scenetag.model.spec import METADATA_KEY, ModelSpec

log = logging.getLogger(__name__)

#: The extra that installs OpenVINO (named in the error when it is missing).
EXTRA = "openvino"
#: Chips per infer request: batch 8 ran as fast as 32 (and 1.3x batch 1) with a quarter of
#: 32's memory (docs/performance.md, "OpenVINO").
BATCH_SIZE = 8
#: LATENCY: one stream over all cores.  THROUGHPUT (a stream per core) was no faster on
#: 2 cores and leaves the readers nothing (docs/performance.md, "OpenVINO").
PERFORMANCE_HINT = "LATENCY"
#: Infer requests in the queue: two, so one batch is handed over while the other runs.
INFER_REQUESTS = 2


#: Every predictor whose infer requests may still be running (drained at exit, see :func:`_drain_at_exit`).
_LIVE: "weakref.WeakSet[OpenVinoPredictor]" = weakref.WeakSet()


def _drain_at_exit() -> None:
    """Wait for every infer request of this process's predictors before the process ends (:func:`at_exit`).

    A request's callback runs on an OpenVINO thread and takes the GIL; once
    the interpreter is finalising, taking it ends that thread with a forced
    unwind that OpenVINO's C++ frames swallow, and glibc aborts the process
    ("FATAL: exception not rethrown", exit -6) instead of letting it exit as
    asked, e.g. with 143 after SIGTERM stopped a run with batches in flight.
    """
    for predictor in list(_LIVE):
        if predictor.owner == os.getpid():  # a forked copy's requests are not this process's
            predictor.close()


def available() -> bool:
    """Whether OpenVINO can be imported (``auto`` takes this backend on the CPU then)."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def _openvino():
    return require("openvino", EXTRA)


def read_openvino_spec(model, path: str | Path) -> ModelSpec:
    """The spec stored in the ONNX metadata of a model OpenVINO has read."""
    key = ["framework", METADATA_KEY]
    if not model.has_rt_info(key):
        raise ModelSpecError(
            f"model {str(path)!r} carries no scenetag spec in its metadata ({METADATA_KEY!r}), "
            "so its labels and preprocessing are unknown: pass --spec spec.json "
            "(labels, thresholds, bands, mean/std; see README), or re-export it with `scenetag export`"
        )
    return ModelSpec.from_json(model.get_rt_info(key).astype(str))


def _with_normalisation(ov, model, spec: ModelSpec):
    """``model`` taking uint8 NCHW chips: the spec's ``(x / 255 - mean) / std`` compiled into the graph."""
    from openvino.preprocess import PrePostProcessor

    ppp = PrePostProcessor(model)
    ppp.input().tensor().set_element_type(ov.Type.u8)
    ppp.input().preprocess().convert_element_type(ov.Type.f32) \
        .mean([255.0 * m for m in spec.mean]).scale([255.0 * s for s in spec.std])
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    return ppp.build()


class OpenVinoPredictor:
    """:class:`~scenetag.model.backends.base.AsyncPredictor` on OpenVINO's CPU plugin.

    Args:
        path: An ONNX file (fp32, or INT8 from ``scenetag quantize``).
        device: "auto" or "cpu" (this backend runs on the CPU).
        spec: A spec that replaces (or supplies) the one stored with the model.
        precision: "fp32" only: the model runs in the precision it was made in.
        threads: Inference threads (0: OpenVINO's choice, all cores).
        hint: OpenVINO performance hint, "LATENCY" or "THROUGHPUT" (default :data:`PERFORMANCE_HINT`).
        requests: Infer requests in the queue (default :data:`INFER_REQUESTS`).
        batch_size: Chips per infer request (default :data:`BATCH_SIZE`).
        model_bytes: The ONNX file's bytes (a model shipped to a Dask worker); ``path`` then only names it.
    """

    #: Seconds a GPU spent (none: this backend runs on the CPU).
    gpu_seconds = 0.0

    def __init__(self, path: str | Path, device: str = "auto", spec: ModelSpec | None = None,
                 precision: str = "fp32", threads: int = 0, hint: str | None = None,
                 requests: int | None = None, batch_size: int | None = None,
                 model_bytes: bytes | None = None) -> None:
        if precision != "fp32":
            raise OptionError(
                f"--precision {precision} needs the torch backend: OpenVINO runs a model in the precision "
                "it was made in (for INT8, make the model with `scenetag quantize`)"
            )
        if is_gpu_device(device):
            raise ModelLoadError(
                f"--device {device}: the openvino backend runs on the CPU; use --backend onnx or torch on a GPU"
            )
        ov = _openvino()
        self.path = str(path)
        core = ov.Core()
        try:
            model = core.read_model(model_bytes if model_bytes is not None else self.path)
        except Exception as exc:  # OpenVINO raises its own untyped errors
            raise ModelLoadError(f"model {self.path!r} could not be read by OpenVINO (is it a valid ONNX "
                                 f"file?): {_reason(exc)}") from exc
        self.spec = spec if spec is not None else read_openvino_spec(model, self.path)
        self._check_shapes(model)
        self.hint = (hint or PERFORMANCE_HINT).upper()
        config = {"PERFORMANCE_HINT": self.hint}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            self.compiled = core.compile_model(_with_normalisation(ov, model, self.spec), "CPU", config)
        except Exception as exc:
            raise ModelLoadError(f"model {self.path!r} could not be compiled by OpenVINO: {_reason(exc)}") from exc
        self.requests = int(requests or INFER_REQUESTS)
        self._queue = ov.AsyncInferQueue(self.compiled, self.requests)
        self._queue.set_callback(_finished)
        self.owner = os.getpid()
        _LIVE.add(self)
        at_exit(_drain_at_exit, priority=200)  # before the reader pools close
        # One queue per predictor; jobs.batch shares predictors between threads.
        self._lock = threading.Lock()
        self.batch_size = int(batch_size or BATCH_SIZE)
        self.device = "cpu"
        self.sha256 = model_sha256(self.path, model_bytes)
        log.info("loaded %s (%s) on OpenVINO CPU, hint %s, %d infer requests", self.spec.name, self.path,
                 self.hint, self.requests)

    def _check_shapes(self, model) -> None:
        """Refuse a model whose input or output shape contradicts the spec (now, not at the first batch)."""
        if len(model.inputs) != 1 or len(model.outputs) != 1:
            raise ModelLoadError(f"model {self.path!r} has {len(model.inputs)} inputs and {len(model.outputs)} "
                                 "outputs, not one chip batch in and one probability batch out")
        shape = model.inputs[0].get_partial_shape()
        if shape.rank.is_dynamic or shape.rank.get_length() != 4:
            raise ModelLoadError(f"model {self.path!r} takes input of shape {shape}, not (N, C, H, W)")
        bands = shape[1]
        if bands.is_static and bands.get_length() != self.spec.n_bands:
            raise ModelSpecError(f"model {self.path!r} takes {bands.get_length()} bands but its spec lists "
                                 f"{self.spec.n_bands} ({', '.join(self.spec.bands)})")
        hw = [d.get_length() for d in (shape[2], shape[3]) if d.is_static]
        if len(hw) == 2 and tuple(hw) != (self.spec.chip_size, self.spec.chip_size):
            raise ModelSpecError(
                f"model {self.path!r} takes {hw[0]}x{hw[1]} pixel chips but its spec says chip_size "
                f"{self.spec.chip_size}: pass --spec with \"chip_size\": {hw[0]}, or re-export the model"
            )
        out = model.outputs[0].get_partial_shape()
        if out.rank.is_static and out.rank.get_length() == 2 and out[1].is_static \
                and out[1].get_length() != self.spec.n_labels:
            raise ModelSpecError(f"model {self.path!r} outputs {out[1].get_length()} classes but its spec lists "
                                 f"{self.spec.n_labels} labels")

    @property
    def on_gpu(self) -> bool:
        """Never: OpenVINO runs on the CPU here."""
        return False

    @property
    def queues_work(self) -> bool:
        """:meth:`submit` returns before the batch is classified (see :func:`~scenetag.model.backends.base.queues_work`)."""
        return True

    def _check(self, chips: np.ndarray) -> None:
        if chips.ndim != 4 or chips.shape[1] != self.spec.n_bands:
            raise ModelLoadError(
                f"model {self.path} takes (N, {self.spec.n_bands}, H, W) chips, got shape {chips.shape}")

    def submit(self, parts: Sequence[np.ndarray], direct: bool = False) -> "Done | _OvPending":
        """Start classifying the chips of ``parts`` (uint8 ``(n_i, C, H, W)``); returns at once.

        The parts are gathered into one uint8 batch first, so the caller may
        reuse their memory as soon as this returns (``direct`` changes nothing
        on the CPU).  A batch larger than :attr:`batch_size` is split over the
        infer requests.  This blocks only while every request is busy.
        """
        if len(parts) == 1:
            chips = np.array(parts[0], dtype=np.uint8, order="C")  # a copy: the caller may reuse its memory
        else:
            chips = np.ascontiguousarray(np.concatenate(parts), dtype=np.uint8)
        return self._start(chips)

    def _start(self, chips: np.ndarray) -> "Done | _OvPending":
        """Queue ``chips`` (a batch this predictor may hold until it is done) on the infer requests."""
        self._check(chips)
        if len(chips) == 0:
            return Done(np.zeros((0, self.spec.n_labels), np.float32))
        pending = _OvPending(self, chips)
        with self._lock:
            for start in range(0, len(chips), self.batch_size):
                # The request reads the batch in place (share_inputs): `pending` keeps it alive.
                self._queue.start_async({0: chips[start:start + self.batch_size]}, (pending, start),
                                        share_inputs=True)
        return pending

    def predict(self, chips: np.ndarray) -> np.ndarray:
        """uint8 ``(N, C, H, W)`` in spec band order → float32 ``(N, L)`` probabilities."""
        return self._start(np.ascontiguousarray(chips, dtype=np.uint8)).result()

    def register_host(self, array: np.ndarray) -> bool:
        """Nothing to page-lock on the CPU: chips are copied into the batch at :meth:`submit`."""
        return False

    def unregister_host(self, array: np.ndarray) -> None:
        """Nothing was registered."""

    def close(self) -> None:
        """Wait for every queued batch."""
        self._queue.wait_all()


def _reason(exc: BaseException) -> str:
    """The telling line of an OpenVINO error (its first lines name C++ source files)."""
    lines = [ln.strip() for ln in str(exc).splitlines()
             if ln.strip() and not ln.strip().startswith("Exception from src/")]
    return lines[0] if lines else type(exc).__name__


def _finished(request, userdata) -> None:
    """AsyncInferQueue callback (on an OpenVINO thread): copy the batch's output out of the request."""
    pending, start = userdata
    try:
        out = request.get_output_tensor(0).data
        pending.fill(start, np.array(out, dtype=np.float32, copy=True))
    except Exception as exc:  # noqa: BLE001 - handed to the waiting thread, which raises it
        pending.fail(exc)


class _OvPending:
    """Probabilities of a batch in OpenVINO's infer requests; :meth:`result` waits for every part."""

    def __init__(self, owner: OpenVinoPredictor, chips: np.ndarray) -> None:
        n = len(chips)
        self._owner = owner
        #: The batch the infer requests read in place, held until they are done.
        self.chips: np.ndarray | None = chips
        self._out = np.empty((n, owner.spec.n_labels), np.float32)
        self._left = -(-n // owner.batch_size)
        self._done = threading.Event()
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._checked: np.ndarray | None = None

    def fill(self, start: int, probs: np.ndarray) -> None:
        if probs.ndim != 2 or probs.shape[1] != self._out.shape[1] or start + len(probs) > len(self._out):
            raise ModelError(f"model {self._owner.path!r} returned outputs of shape {probs.shape}, not "
                             f"(chips, {self._out.shape[1]}) for its {self._out.shape[1]} labels")
        self._out[start:start + len(probs)] = probs
        self._part_done()

    def fail(self, exc: BaseException) -> None:
        self._error = exc
        self._part_done()

    def _part_done(self) -> None:
        with self._lock:
            self._left -= 1
            if self._left == 0:
                self._done.set()

    def uploaded(self) -> None:
        """The chips were copied into the predictor's own batch when it was submitted."""

    def result(self) -> np.ndarray:
        """Wait for the probabilities, checked float32 ``(N, L)``."""
        if self._checked is None:
            self._done.wait()
            self.chips = None
            if self._error is not None:
                if isinstance(self._error, ModelError):
                    raise self._error
                raise ModelError(f"OpenVINO failed on model {self._owner.path!r}: {self._error}") from self._error
            self._checked = checked_probabilities(self._out, self._owner.spec, self._owner.path)
        return self._checked
