"""ONNX Runtime backend: an ONNX file whose metadata carries the spec, as a :class:`~scenetag.model.backends.base.Predictor`.

Each batch is normalised once (vectorised) and run.  CUDA and TensorRT
providers are taken when the installed ONNX Runtime has them and ``device``
allows it (``"cuda:N"`` picks GPU ``N``); there the batch goes through IO
binding: one persistent input buffer on the GPU, re-made only when the batch
shape changes, and the output left on the GPU until it is copied back once,
so a batch crosses the bus once each way.  What was measured and tested of
that path is in docs/performance.md ("Backends").
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from scenetag.errors import ModelLoadError, ModelSpecError, OptionError, require
from scenetag.hashing import model_sha256
from scenetag.model.backends.base import checked_probabilities, device_id, is_gpu_device
from scenetag.model.preprocess import normalize
from scenetag.model.spec import METADATA_KEY, ModelSpec

log = logging.getLogger(__name__)


#: Chips per call by where the session runs: on the CPU, batch 8 runs as fast as 32
#: with a third of the memory (docs/performance.md, "Backends"); GPUs want more.
BATCH_SIZE = {"cpu": 8, "gpu": 64}
#: Execution providers that run on a CUDA GPU, best first.
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def providers_for(device: str, available: list[str]) -> list[str | tuple[str, dict]]:
    """Execution providers for ``device``, best first, among ``available``.

    GPU providers come as ``(name, {"device_id": N})``, the form
    ``InferenceSession(providers=...)`` takes options in; the CPU provider as its name.
    """
    if device == "cpu":
        return ["CPUExecutionProvider"]
    gpu = device_id(device)
    chosen = [p for p in GPU_PROVIDERS if p in available]
    if device.startswith("cuda") and not chosen:
        raise ModelLoadError(
            f"--device {device} asks for CUDA, but this ONNX Runtime has only {available}: "
            "install scenetag[gpu] (onnxruntime-gpu, instead of onnxruntime)"
        )
    return [(p, {"device_id": gpu}) for p in chosen] + ["CPUExecutionProvider"]


def read_onnx_spec(path: str | Path) -> ModelSpec:
    """The spec stored in an ONNX file's metadata."""
    ort = require("onnxruntime", "cpu", "gpu")
    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own untyped errors
        raise ModelLoadError(f"model {str(path)!r} is not a valid ONNX file ({exc})") from exc
    return _spec_from_session(sess, path)


def _spec_from_session(sess, path) -> ModelSpec:
    meta = sess.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in meta:
        raise ModelSpecError(
            f"model {str(path)!r} carries no scenetag spec in its metadata ({METADATA_KEY!r}), "
            "so its labels and preprocessing are unknown: pass --spec spec.json "
            "(labels, thresholds, bands, mean/std; see README), or re-export it with `scenetag export`"
        )
    return ModelSpec.from_json(meta[METADATA_KEY])


class OnnxPredictor:
    """:class:`~scenetag.model.backends.base.Predictor` on ONNX Runtime.

    ``io_binding`` (``None``: on for CUDA/TensorRT, off on the CPU) runs each batch
    through a persistent bound input and a device-bound output instead of
    ``session.run`` (see the module notes); forced on with the CPU provider it
    binds to ``"cpu"``.
    """

    def __init__(self, path: str | Path, device: str = "auto", spec: ModelSpec | None = None,
                 precision: str = "fp32", intra_op_threads: int = 0, model_bytes: bytes | None = None,
                 io_binding: bool | None = None) -> None:
        """Load ``path``; with ``model_bytes`` the model comes from memory and ``path`` only names it."""
        if precision != "fp32":
            raise OptionError(
                f"--precision {precision} needs the torch backend: ONNX Runtime runs a model in the "
                "precision it was exported in (pass a checkpoint with --backend torch)"
            )
        ort = require("onnxruntime", "cpu", "gpu")
        self._ort = ort
        self.path = str(path)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads:
            opts.intra_op_num_threads = intra_op_threads
        providers = providers_for(device, ort.get_available_providers())
        try:
            self.session = ort.InferenceSession(model_bytes if model_bytes is not None else self.path,
                                                sess_options=opts, providers=providers)
        except Exception as exc:
            raise ModelLoadError(
                f"model {self.path!r} could not be loaded by ONNX Runtime: "
                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            ) from exc
        self.spec = spec if spec is not None else _spec_from_session(self.session, self.path)
        inputs = self.session.get_inputs()
        outputs = self.session.get_outputs()
        self._input = inputs[0].name
        self._output = outputs[0].name
        shape = inputs[0].shape
        if len(shape) != 4:
            raise ModelLoadError(f"model {self.path!r} takes input of shape {shape}, not (N, C, H, W)")
        if isinstance(shape[1], int) and shape[1] != self.spec.n_bands:
            raise ModelSpecError(
                f"model {self.path!r} takes {shape[1]} bands but its spec lists "
                f"{self.spec.n_bands} ({', '.join(self.spec.bands)})"
            )
        hw = tuple(shape[2:])
        if all(isinstance(d, int) for d in hw) and hw != (self.spec.chip_size, self.spec.chip_size):
            # Found now rather than as an ONNX Runtime error at the first batch, after the reading.
            raise ModelSpecError(
                f"model {self.path!r} takes {hw[0]}x{hw[1]} pixel chips but its spec says chip_size "
                f"{self.spec.chip_size}: pass --spec with \"chip_size\": {hw[0]}"
                + ("" if hw[0] == hw[1] else " (a square chip)")
                + f", or re-export the model at {self.spec.chip_size} px (a dynamic H/W input)"
            )
        out_shape = outputs[0].shape
        if len(out_shape) == 2 and isinstance(out_shape[1], int) and out_shape[1] != self.spec.n_labels:
            raise ModelSpecError(
                f"model {self.path!r} outputs {out_shape[1]} classes but its spec lists "
                f"{self.spec.n_labels} labels"
            )
        self.sha256 = model_sha256(self.path, model_bytes)
        self.providers = self.session.get_providers()
        on_gpu = self.providers[0] in GPU_PROVIDERS
        gpu = device_id(device)
        #: "cuda:N" where the session runs on a GPU provider, else "cpu".
        self.device = f"cuda:{gpu}" if on_gpu else "cpu"
        self.batch_size = BATCH_SIZE["gpu" if on_gpu else "cpu"]
        self.io_binding = on_gpu if io_binding is None else bool(io_binding)
        # Where the bound input and output live: the GPU the session runs on, else host memory.
        self._bind_device = ("cuda", gpu) if on_gpu else ("cpu", 0)
        self._binding = self.session.io_binding() if self.io_binding else None
        self._bound_input = None  # OrtValue of the last batch shape, re-made when it changes
        # Predictors are shared between a process's threads (jobs.batch); session.run is
        # thread-safe, one IOBinding and its bound buffer are not.
        self._lock = threading.Lock()
        log.info("loaded %s (%s) on %s%s", self.spec.name, self.path, self.providers[0],
                 f", IO binding to {self._bind_device[0]}:{self._bind_device[1]}" if self.io_binding else "")

    @property
    def on_gpu(self) -> bool:
        """Whether the session runs on a CUDA or TensorRT provider."""
        return is_gpu_device(self.device)

    def predict(self, chips: np.ndarray) -> np.ndarray:
        """uint8 ``(N, C, H, W)`` → float32 probabilities ``(N, L)``."""
        if len(chips) == 0:
            return np.zeros((0, self.spec.n_labels), np.float32)
        x = normalize(chips, self.spec)
        if self.io_binding:
            with self._lock:
                probs = self._run_bound(x)
        else:
            (probs,) = self.session.run([self._output], {self._input: x})
        return checked_probabilities(probs, self.spec, self.path)

    def _run_bound(self, x: np.ndarray) -> np.ndarray:
        """Run ``x`` through the IO binding: copy it into the bound input, run, copy the output back."""
        kind, index = self._bind_device
        if self._bound_input is None or tuple(self._bound_input.shape()) != x.shape:
            self._bound_input = self._ort.OrtValue.ortvalue_from_shape_and_type(
                x.shape, x.dtype, kind, index)
            self._binding.bind_ortvalue_input(self._input, self._bound_input)
        self._bound_input.update_inplace(x)
        # Re-bound every call so ORT allocates the output for this batch's shape.
        self._binding.bind_output(self._output, kind, index)
        self.session.run_with_iobinding(self._binding)
        (probs,) = self._binding.copy_outputs_to_cpu()
        return probs
