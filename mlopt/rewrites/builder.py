"""The builder contract a rule writes its replacement against, once, for both kinds of graph.

`SpecBuilder` (rewrites/spec_builder.py) emits protobuf `Operation`s for a saved spec; `MbBuilder`
(coreml/mb_builder.py) calls coremltools' `mb` inside the pass pipeline. A rule's `lower` sees only the methods
below, the way its matcher sees only graph/interface.py. Values are opaque handles (names, or pymil Vars).

Every op runs in its inputs' dtype; the builders apply the target opset's dtype rules for parameters
(rewrites/opset_rules.py), so a rule never branches on the opset. `lower` returns the value replacing the
chain's output: an op's output, a constant, or a value the chain reads (the builders add what it takes).
"""

from typing import Optional, Protocol, Sequence

import numpy as np


class LoweringFailed(ValueError):
    """A replacement cannot be built for this match (a weight that cannot be split, no weight file to write, ...):
    the chain is left alone with this reason, never an internal error. A rule's `lower` may raise it too."""


class Builder(Protocol):
    opset: str  # "CoreML5" ... "CoreML9"

    def dtype(self, value) -> int:
        """The value's MIL DataType enum."""

    def rank(self, value) -> int: ...

    def dim(self, value, axis: int) -> Optional[int]:
        """Static size along `axis`, None if unknown."""

    def const(self, array, dtype: int):
        """A literal tensor (or scalar) of `dtype`."""

    def mul(self, x, y): ...

    def add(self, x, y): ...

    def concat(self, values: Sequence, axis: int): ...

    def select(self, cond, a, b):
        """MIL select: a where the bool `cond` holds, else b (all three broadcast); a's dtype."""

    def slice_along(self, x, axis: int, begin: int, end: int):
        """x[begin:end] along `axis`, every other axis whole (only `axis` needs a static size)."""

    def layer_norm(self, x, axes: Sequence[int], epsilon: float, gamma=None, beta=None):
        """MIL layer_norm; gamma/beta, when given, are constants of shape x.shape[axes]."""

    def instance_norm(self, x, epsilon: float, gamma=None, beta=None):
        """MIL instance_norm (x of rank 3-4, channels on axis 1, normalised over the axes after it); gamma/beta,
        when given, are constants of shape (C,). Its parameters follow layer_norm's dtype rules."""

    def folds_params(self, x, epsilon: float) -> bool:
        """Whether layer_norm can take gamma/beta and keep `epsilon` (nearly) as it is: from iOS17 they share
        epsilon's type, so under fp16 x an epsilon fp16 would spoil (1e-7, 1e-12) needs them applied after."""

    def cast(self, x, dtype: int): ...

    def elementwise(self, op_type: str, x, **literals):
        """Any MIL op whose output has x's shape and dtype (an activation such as `gelu`, `silu`, `clip`), its
        other inputs literals: str -> string, bool -> bool, int -> int32, float -> x's dtype."""

    def linear(self, x, weight, bias=None):
        """MIL linear: x @ weight.T + bias; weight (out, in) and bias (out,) constants. Changes x's last size."""

    def matmul(self, x, y, transpose_x: bool = False, transpose_y: bool = False):
        """MIL matmul of x and y, both of rank 2 or more (batch axes broadcast); one of them may be a constant."""

    def conv(self, x, weight, bias=None):
        """MIL conv with strides 1, no padding, dilations 1 and one group: with a 1x1 kernel, a linear over the
        channel axis 1 of x (N, C_in, *spatial); weight (C_out, C_in, 1, ...), bias (C_out,) constants."""

    def constant_value(self, value) -> Optional[np.ndarray]:
        """The data of `value` if it is a plain constant small enough to read whole (immediate, or stored up to
        graph/stored_constants.SMALL_CONSTANT elements), else None: what a rule reads to compute a new constant."""

    def constant_slice(self, value, axis: int, begin: int, end: int):
        """A new constant: value[begin:end] along `axis` of the plain constant `value` (a weight split into
        chunks). A stored weight stays stored: the new blob is byte ranges of the old one (package/weight_writer.py),
        copied through the file system. A weight a constexpr op decompresses (palettized, int8) is sliced in its
        compressed form: a new constexpr op over sliced indices/data and the shared or sliced LUT/scales
        (rewrites/compressed_slicing.py), never expanded. Raises LoweringFailed where it cannot be built."""

    def scaled_constant(self, value, factor: float):
        """A new constant: the float constant `value` times `factor`, rounded once to its dtype (a power of two
        keeps every normal value exact). A stored weight is streamed into a new blob; a weight a constexpr op
        decompresses is scaled in the one parameter its decompression is linear in (the LUT, the scale: see
        rewrites/compressed_scaling.py), never expanded. Raises LoweringFailed where it cannot be built."""

    def same_op(self, value, **inputs):
        """The op defining `value` (an op of the chain) once more, with the named inputs bound to other values (a
        scaled weight, a moved epsilon) and everything else as it was; its output has `value`'s type. How a rule
        changes one operand of an op of any type without knowing its other parameters."""

    def constant_as(self, value, shape: Sequence[int]):
        """`value`'s data as a constant of `shape` (same element count), or None unless `value` is a plain
        constant (not decompressed, not computed): how gamma/beta become layer_norm parameters."""


def slice_masks(rank, axis, begin, end):
    """slice_by_index `begin`, `end` and `end_mask` for x[begin:end] along `axis`, every other axis whole."""
    begins = np.zeros(rank, np.int32)
    begins[axis] = begin
    ends = np.zeros(rank, np.int32)
    ends[axis] = end
    end_mask = np.ones(rank, bool)
    end_mask[axis] = False
    return begins, ends, end_mask


def broadcast_dims(a, b):
    """The broadcast of two shapes whose entries are ints or None (unknown): numpy's rules, trailing aligned."""
    rank = max(len(a), len(b))
    a = [1] * (rank - len(a)) + list(a)
    b = [1] * (rank - len(b)) + list(b)
    out = []
    for p, q in zip(a, b):
        if p == 1:
            out.append(q)
        elif q == 1 or q is None:
            out.append(p)
        elif p is None:
            out.append(q)
        else:
            out.append(max(p, q))
    return out
