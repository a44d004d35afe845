"""Shipping a model to the workers of a Dask cluster, and each worker's predictor cache.

The model's bytes travel once, in a worker plugin (:class:`ModelPlugin`),
which the scheduler also hands to workers that join (or restart) later; each
worker process builds one predictor per model sha256 on first use.  Tasks
carry only a small :class:`~jobs.models.ShippedModel`.  The module-level
state of that cache is this module's alone.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from pathlib import Path
from typing import Any, Iterator

from distributed import WorkerPlugin

from scenetag.errors import ModelLoadError
from scenetag.hashing import model_sha256
from scenetag.jobs.models import ShippedModel

log = logging.getLogger(__name__)

_lock = threading.Lock()
#: plugin name → (ShippedModel, model bytes), on each worker.
_shipped: dict[str, tuple[ShippedModel, bytes]] = {}
#: (sha256, device) → predictor, on each worker process.
_predictors: dict[tuple[str, str], Any] = {}
#: Predictors built in this process (what the tests check: one per model per worker).
_loads: list[str] = []


class ModelPlugin(WorkerPlugin):
    """Carries the model bytes to every worker, once, including workers that start later."""

    def __init__(self, model: ShippedModel, data: bytes) -> None:
        self.model = model
        self.data = data
        self.name = f"scenetag-model-{model.sha256[:12]}-{uuid.uuid4().hex[:8]}"

    def setup(self, worker: Any) -> None:
        with _lock:
            _shipped[self.name] = (self.model, self.data)

    def teardown(self, worker: Any) -> None:
        from scenetag.jobs.pipeline import forget_predictor

        with _lock:
            _shipped.pop(self.name, None)
            if not any(ref.sha256 == self.model.sha256 for ref, _ in _shipped.values()):
                for key in [k for k in _predictors if k[0] == self.model.sha256]:
                    forget_predictor(_predictors.pop(key))  # the reader pool stays; its hold on the model goes


def worker_predictor(model: ShippedModel) -> Any:
    """This process's predictor for ``model``, built once from the shipped bytes."""
    key = (model.sha256, model.device)
    with _lock:
        if key in _predictors:
            return _predictors[key]
        data = next((d for ref, d in _shipped.values() if ref.sha256 == model.sha256), None)
        if data is None:
            # Not shipped to this process (an in-process call): read the file, and check it.
            log.info("model %s was not shipped to this process; reading %s", model.sha256[:12], model.path)
            data = Path(model.path).read_bytes()
        from scenetag.model.backends.tta import with_tta

        # spec.tta is the TTA the caller chose (the spec's own, or --tta): the wrapper applies it.
        predictor = with_tta(_engine(model, data))
        if predictor.sha256 != model.sha256:
            raise ModelLoadError(f"model {model.path!r} changed during the batch "
                                 f"(sha256 {predictor.sha256[:12]}, expected {model.sha256[:12]})")
        _predictors[key] = predictor
        _loads.append(model.sha256)
        return predictor


def _engine(model: ShippedModel, data: bytes) -> Any:
    """The predictor for the shipped bytes, as ``model.backend`` and this worker's device say.

    One inference thread per task on the CPU: tasks run side by side on a
    worker (one per thread), so that is a core each.  An ONNX model runs on
    ONNX Runtime or OpenVINO; a torch checkpoint on the torch backend in
    ``model.precision``: on a GPU worker that is the fast path of ``run``
    (bf16, CUDA graphs, uploads from the reader slots).
    """
    from scenetag.model.backends.registry import AUTO, CPU_BACKEND, auto_backend

    name = auto_backend(model.path, model.device, model.precision) if model.backend == AUTO else model.backend
    if name == "torch":
        from scenetag.model.backends.torch_backend import TorchPredictor

        return TorchPredictor(model.path, device=model.device, spec=model.spec, precision=model.precision,
                              threads=1, model_bytes=data)
    if name == CPU_BACKEND:
        from scenetag.model.backends.openvino_backend import OpenVinoPredictor

        return OpenVinoPredictor(model.path, device=model.device, spec=model.spec, precision=model.precision,
                                 threads=1, model_bytes=data)
    if name != "onnx":
        raise ModelLoadError(f"--backend {name}: a cluster runs models on onnx, openvino or torch")
    from scenetag.model.backends.onnx_backend import OnnxPredictor

    return OnnxPredictor(model.path, device=model.device, spec=model.spec, precision=model.precision,
                         intra_op_threads=1, model_bytes=data)


def model_loads() -> list[str]:
    """sha256 of each predictor this process has built from shipped bytes (for tests and diagnostics)."""
    return list(_loads)


def model_bytes(predictor: Any) -> bytes:
    """The bytes of a predictor's model file (ONNX, or a torch checkpoint), checked against its sha256."""
    from scenetag.model.backends.registry import suffixes_of

    path = Path(predictor.path)
    shippable = suffixes_of("onnx") + suffixes_of("torch")
    if path.suffix.lower() not in shippable:
        raise ModelLoadError(
            f"a cluster runs model files ({', '.join(shippable)}), and {str(path)!r} is not one: "
            "export it first with `scenetag export`"
        )
    data = path.read_bytes()
    if model_sha256(path, data) != predictor.sha256:
        raise ModelLoadError(f"model {str(path)!r} changed since it was loaded: run again")
    return data


@contextlib.contextmanager
def shipped(client: Any, predictor: Any, device: str, backend: str = "auto",
            precision: str | None = None) -> Iterator[ShippedModel]:
    """The model's bytes on every worker of ``client`` (a worker plugin) while the block runs.

    The workers build their predictors with ``backend`` (on ``device``), in
    ``precision`` (default: the predictor's own; "auto" and "int8" run the
    model as it was made).
    """
    from scenetag.model.backends.registry import AS_MADE

    precision = precision or getattr(predictor, "precision", "fp32")
    model = ShippedModel(str(predictor.path), predictor.sha256, predictor.spec, device, backend,
                         "fp32" if precision in AS_MADE else precision)
    plugin = ModelPlugin(model, model_bytes(predictor))
    client.register_plugin(plugin, name=plugin.name)
    try:
        yield model
    finally:
        try:
            client.unregister_worker_plugin(plugin.name)
        except Exception as err:  # noqa: BLE001 - cleanup must not hide the real error
            log.debug("could not unregister %s: %s", plugin.name, err)
