"""mlopt: rewrite RMSNorm chains in Core ML ML programs to the ANE-friendly LayerNorm trick.

Layers, each in its own folder: `package` (read/write .mlpackage), `graph` (read-only view of a MIL function),
`patterns` (match RMSNorm chains, explain near-misses), `rewrites` (lower matches to the LayerNorm trick),
`cli` (the `mlopt` command). `optimize.py` ties them together.
"""

from ._version import __version__
from .api import optimize, optimize_package
from .errors import BadInputError, MloptError
from .report import Report

__all__ = ["__version__", "optimize", "optimize_package", "BadInputError", "MloptError", "Report"]
