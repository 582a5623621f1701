"""mlopt: rewrite RMSNorm chains in Core ML ML programs to the ANE-friendly LayerNorm trick.

Layers, each in its own folder: `package` (read/write .mlpackage), `graph` (read-only view of a MIL function),
`patterns` (match RMSNorm chains, explain near-misses), `rewrites` (lower matches to the LayerNorm trick),
`numerics` (interpreter, self-check, verify), `cli` (the `mlopt` command). `optimize.py` ties them together.

The public names load on first use (PEP 562): `mlopt optimize` starts copying the weights before numpy and the
analysis are imported, so start-up stays a small part of a large model's run.
"""

from ._version import __version__
from .errors import BadInputError, MloptError

_LAZY = {"optimize": "api", "optimize_package": "api", "Report": "report", "convert": "coreml"}
__all__ = ["__version__", "convert", "optimize", "optimize_package", "BadInputError", "MloptError", "Report"]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'mlopt' has no attribute {name!r}")
