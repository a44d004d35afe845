"""The model as a scene job's tasks see it: its identity, its spec, and where the predictor comes from.

In this process a task uses the predictor the caller loaded
(:class:`LocalModel`, any backend).  On a cluster, tasks carry a small
:class:`ShippedModel` and get a worker's own predictor, built from bytes
shipped once to every worker (:mod:`jobs.shipping`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from scenetag.model.spec import ModelSpec


class SceneModel(Protocol):
    """What a task needs of the model: its identity, spec, and a predictor."""

    path: str
    sha256: str
    spec: ModelSpec

    def predictor(self) -> Any:
        """The predictor to classify with, in the process the task runs in."""
        ...


@dataclass(frozen=True)
class LocalModel:
    """A predictor already loaded in this process (the in-process executor's model)."""

    loaded: Any = field(repr=False)

    @property
    def path(self) -> str:
        return str(self.loaded.path)

    @property
    def sha256(self) -> str:
        return self.loaded.sha256

    @property
    def spec(self) -> ModelSpec:
        return self.loaded.spec

    def predictor(self) -> Any:
        return self.loaded


@dataclass(frozen=True)
class ShippedModel:
    """A model whose bytes (ONNX, or a torch checkpoint) were shipped to the workers; small and picklable."""

    path: str
    sha256: str
    spec: ModelSpec
    device: str = "cpu"
    #: The backend asked for: "auto" resolves on each worker, for its own device.
    backend: str = "auto"
    #: What the workers run it in: "fp32", or "bf16"/"fp16" (a torch checkpoint's autocast).
    precision: str = "fp32"

    def predictor(self) -> Any:
        from scenetag.jobs.shipping import worker_predictor

        return worker_predictor(self)




@dataclass(frozen=True)
class PlannedModel:
    """A model known by its file, checksum and spec only: all that planning needs (a dry run).

    It classifies nothing: :meth:`predictor` raises.
    """

    path: str
    sha256: str
    spec: ModelSpec

    def predictor(self) -> Any:
        raise RuntimeError(f"{self.path}: a planned model has no predictor (a dry run classifies nothing)")
