"""The graph contract every pattern is written against: everything patterns/ and rules/ may ask of a program.

Two adapters implement it, with parallel names: `SpecGraph` over one function of a saved spec
(graph/spec_graph.py, for `mlopt optimize`) and `PymilGraph` over a coremltools pymil function
(coreml/pymil_graph.py, for the conversion-time passes). A rule's matcher exists once and runs on either.

Ops are opaque to patterns: an op is whatever the adapter hands out (a protobuf Operation, a pymil Operation),
compared by identity. A value is its name, a string; names are unique within a function.
"""

from dataclasses import dataclass
from typing import Iterable, List, Optional, Protocol

import numpy as np

Op = object  # an adapter's op handle
Value = str  # a value's name


@dataclass(frozen=True)
class Use:
    """One use of a value: input `param` of `op`, or (op None) an output of `block` (a function output for the
    function's main block)."""

    op: Optional[Op]
    param: str
    block: object


class GraphInterface(Protocol):
    name: str  # the function's name

    def ops(self) -> Iterable[Op]:
        """Every op of the function, nested blocks included, in program order within each block."""

    def op_type(self, op: Op) -> str:
        """The MIL op type: "mul", "reduce_mean", ..."""

    def op_name(self, op: Op) -> str:
        """The op's name (often not its output's name)."""

    def output(self, op: Op) -> Value:
        """The op's first output value."""

    def has_input(self, op: Op, param: str) -> bool:
        """Whether the op binds input `param` at all."""

    def arg(self, op: Op, param: str) -> Optional[Value]:
        """The value bound to input `param` (its first binding), or None if absent or an inline literal."""

    def args(self, op: Op, param: str) -> List[Optional[Value]]:
        """Every binding of input `param` (a variadic input such as concat's values), None for inline literals."""

    def const(self, op: Op, param: str) -> Optional[np.ndarray]:
        """The literal value of input `param` if it is a known constant, else None."""

    def const_value(self, value: Value) -> Optional[np.ndarray]:
        """The literal `value` holds if a `const` op defines it (small weight-file constants included where the
        adapter can read them), else None."""

    def const_chunks(self, value: Value, window: Optional[int] = None) -> Optional[Iterable[np.ndarray]]:
        """The flat elements (C order) of the constant `value` of any size, at most `window` at a time (weight-file
        constants streamed through a bounded window), or None if no `const` op defines it or it cannot be read.
        How a pattern checks a large constant (every element of a mask) without holding it whole."""

    def producer(self, value: Value) -> Optional[Op]:
        """The op producing `value`; None for function inputs and block inputs."""

    def consumers(self, value: Value) -> List[Use]:
        """Every use of `value`."""

    def dtype(self, value: Value) -> int:
        """The value's MIL DataType enum (graph/dtypes.py); -1 where the adapter knows no such enum."""

    def rank(self, value: Value) -> int:
        """The value's rank."""

    def dim(self, value: Value, axis: int) -> Optional[int]:
        """Static size along `axis`, None if unknown."""

    def is_float_tensor(self, value: Value) -> bool:
        """True for an fp16/fp32 tensor."""

    def is_constant_expr(self, value: Value) -> bool:
        """True if the value depends on no function input or state (constant per call)."""

    def block(self, op: Op) -> object:
        """The block holding the op (compared by identity)."""

    def position(self, op: Op) -> int:
        """The op's place in program order (a sorting key)."""
