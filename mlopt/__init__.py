"""mlopt: rewrite RMSNorm chains in Core ML ML programs to the ANE-friendly LayerNorm trick.

Layers, each in its own folder: `package` (read/write .mlpackage), `graph` (validation and a read-only view of a
MIL function), `patterns` (match RMSNorm chains, explain near-misses), `rewrites` (lower matches to the LayerNorm
trick), `numerics` (interpreter, self-check, verify), `cli` (the `mlopt` command). `engine.py` ties them
together on a parsed spec; `api.py` holds the Python entry points.

The public names load on first use (PEP 562): `mlopt optimize` starts copying the weights before numpy and the
analysis are imported, so start-up stays a small part of a large model's run. No submodule shares a public
name, so importing one never replaces a function on the package.
"""

from ._version import __version__
from .errors import BadInputError, CannotVerify, MloptError, OutputError

_LAZY = {"optimize": "api", "optimize_package": "api", "Report": "report", "convert": "coreml"}
__all__ = [
    "__version__", "convert", "optimize", "optimize_package", "Report",
    "BadInputError", "CannotVerify", "MloptError", "OutputError",
]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # loaded once; later lookups are plain attribute reads
        return value
    raise AttributeError(f"module 'mlopt' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
