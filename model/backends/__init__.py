"""Runtime backends behind one seam: the protocols (:mod:`.base`) and the name → backend registry (:mod:`.registry`).

Importing this package imports neither ONNX Runtime nor torch.
"""

from scenetag.model.backends.base import (AsyncPredictor, Done, Pending, Predictor, Submitter,
                                          checked_probabilities, device_id)
from scenetag.model.backends.registry import backend_for, backend_names, create_predictor, register_backend

__all__ = ["AsyncPredictor", "Done", "Pending", "Predictor", "Submitter", "backend_for", "backend_names",
           "checked_probabilities", "create_predictor", "device_id", "register_backend"]
