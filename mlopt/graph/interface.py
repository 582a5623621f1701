"""The graph interface the RMSNorm pattern is written against - everything patterns/ may ask of a program.

Two adapters implement it: `FunctionView` over a saved spec (graph/view.py, for `mlopt optimize`) and
`PymilGraph` over a coremltools pymil function (coreml/pymil_graph.py, for the conversion-time passes). The
matching rules exist once, in patterns/, and run on either.

Ops and values are opaque to patterns: an op is whatever the adapter hands out, a value is its name (a string).
"""

from typing import Iterable, Optional, Protocol

import numpy as np


class GraphInterface(Protocol):
    name: str  # the function's name

    def ops(self) -> Iterable[object]:
        """Every op of the function, nested blocks included."""

    def op_type(self, op) -> str:
        """The MIL op type: "mul", "reduce_mean", ..."""

    def op_name(self, op) -> str:
        """The op's name (often not its output's name)."""

    def output(self, op) -> str:
        """The name of the op's first output value."""

    def has_input(self, op, param) -> bool:
        """Whether the op binds input `param` at all."""

    def arg(self, op, param) -> Optional[str]:
        """The value bound to input `param` (its first binding), or None if absent or an inline literal."""

    def const(self, op, param) -> Optional[np.ndarray]:
        """The literal value of input `param` if it is a known constant, else None."""

    def producer(self, value) -> Optional[object]:
        """The op producing `value`; None for function inputs and block inputs."""

    def consumers(self, value) -> list:
        """Uses of `value`: `Use(op, param, block)`, op None for a block or function output."""

    def dtype(self, value) -> int:
        """The value's MIL DataType enum (graph/dtypes.py)."""

    def rank(self, value) -> int: ...

    def dim(self, value, axis) -> Optional[int]:
        """Static size along `axis`, None if unknown."""

    def is_float_tensor(self, value) -> bool: ...

    def is_constant_expr(self, value) -> bool:
        """True if the value depends on no function input or state (constant per call)."""

    def block(self, op) -> object:
        """The block holding the op (compared by identity)."""

    def position(self, op) -> int:
        """The op's place in program order (sorting key)."""
