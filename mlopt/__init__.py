"""mlopt: rewrite chains of primitive ops in Core ML ML programs to what the Neural Engine runs well (RMSNorm ->
the LayerNorm trick, ...).

Layers, lowest first, each in its own folder (imports only point down; tests/test_layers.py checks it, and
docs/writing-a-rule.md lists the order): `package` (read/write .mlpackage, the weight-file reader and writer),
`graph` (validation, the graph contract and its saved-spec adapter), `patterns` (matching machinery: walks across
casts, traces, match statuses), `numerics` (interpreter, proofs), `rewrites` (the builder contract, its protobuf
builder, splicing), `rules` (one module per rewrite: pattern, replacement, proof; `rules/__init__.py` is the
registry, the default rule set), `engine.py` (the optimize pipeline on a parsed spec) beside `coreml` (the pymil
adapter, the mb builder and the conversion-time passes), `analyses` (read-only: `verify` compares two packages, `audit`
finds where fp16 breaks, `lint` checks Neural Engine limits),
then `api.py` (the Python entry points), `batch.py` and `cli` (the `mlopt` command). `signals.py` routes SIGINT,
SIGTERM and SIGHUP for batch work and the command line alike.

The public names load on first use (PEP 562): `mlopt optimize` starts copying the weights before numpy and the
analysis are imported, so start-up stays a small part of a large model's run. No submodule shares a public
name, so importing one never replaces a function on the package.
"""

from ._version import __version__
from .errors import BadInputError, CannotVerify, MloptError, OutputError

_LAZY = {"optimize": "api", "optimize_package": "api", "Report": "report", "convert": "coreml", "lint": "analyses.lint",
         "audit": "analyses.audit"}
__all__ = [
    "__version__", "audit", "convert", "lint", "optimize", "optimize_package", "Report",
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
