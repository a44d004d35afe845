"""The training stack: data, networks, losses, training, metrics, evaluation, calibration, checkpoints, export.

Needs the ``torch`` extra.  The job and the ONNX backend never import it; the torch
backend reads checkpoints through :mod:`.checkpoint`.
"""
