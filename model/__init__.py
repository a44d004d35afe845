"""Models in three layers: the frozen spec and preprocessing (here), the runtime backends
(:mod:`scenetag.model.backends`: protocols, the name → backend registry, ONNX Runtime, torch), and the
training stack (:mod:`scenetag.model.training`)."""

from scenetag.model.spec import ModelSpec, PLANET_LABELS

__all__ = ["ModelSpec", "PLANET_LABELS"]
