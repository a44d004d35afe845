"""Models: the frozen spec that travels with every model, and predictor backends."""

from scenetag.model.spec import ModelSpec, PLANET_LABELS

__all__ = ["ModelSpec", "PLANET_LABELS"]
