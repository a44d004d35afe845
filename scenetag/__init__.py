"""scenetag: tag georeferenced scenes with a multi-label chip classifier.

The top-level packages follow the data: ``tiler`` cuts a scene into chips,
``model`` turns chips into probabilities and tags, ``outputs_schema`` declares
and writes the GeoPackage, and ``jobs`` orchestrates them.  This package holds
what they share: the version, the error hierarchy and environment settings.
"""

__version__ = "0.1.0"
