"""numpy implementations of MIL ops, registered by op type.

Each implementation takes the op's inputs as keyword arguments (numpy arrays; a variadic input is a list;
absent optional inputs are missing, so the defaults written in the signatures are MIL's defaults) and returns
one array or a tuple for multi-output ops. The evaluator casts results to the output's declared dtype.
Ops deliberately left out are listed with the reason in `excluded.EXCLUDED`.
"""

from .registry import IMPLEMENTATIONS, implementation
from . import elementwise, activation, reduction, norm, tensor, layout, indexing, nn, pool, attention, lists, compressed  # noqa: F401
from .excluded import EXCLUDED

__all__ = ["IMPLEMENTATIONS", "EXCLUDED", "implementation"]
