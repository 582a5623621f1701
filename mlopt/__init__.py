"""mlopt: rewrite chains of primitive ops in Core ML ML programs to what the Neural Engine runs well (RMSNorm ->
the LayerNorm trick, ...).

Layers, each in its own folder: `package` (read/write .mlpackage), `graph` (validation, the graph contract and
its saved-spec adapter), `patterns` (matching machinery: walks across casts, traces, match statuses), `rules`
(one module per rewrite: pattern, replacement, float64 reference; `rules/__init__.py` is the registry),
`rewrites` (the builder contract, its protobuf builder, splicing), `numerics` (interpreter, self-check),
`coreml` (the pymil adapter, the mb builder and the conversion-time passes), `analyses` (read-only analyses
of a program: `audit`), `cli` (the `mlopt` command).
`engine.py` ties them together on a parsed spec, `verify.py` compares two packages, `api.py` holds the Python
entry points.

The public names load on first use (PEP 562): `mlopt optimize` starts copying the weights before numpy and the
analysis are imported, so start-up stays a small part of a large model's run. No submodule shares a public
name, so importing one never replaces a function on the package.
"""

from ._version import __version__
from .errors import BadInputError, CannotVerify, MloptError, OutputError

_LAZY = {"optimize": "api", "optimize_package": "api", "Report": "report", "convert": "coreml", "audit": "analyses.audit"}
__all__ = [
    "__version__", "audit", "convert", "optimize", "optimize_package", "Report",
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
