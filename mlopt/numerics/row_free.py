"""Row-free stand-ins for the ops of a chain that assume the declared row count, so the self-check can feed a
few rows instead of the whole declared shape.

Rows along the axes a match does not mix over are independent, and the self-check feeds a handful of them
(numerics/selfcheck.py). Some spellings bake the declared row count into the program: StableHLO's reshape of a
statistic to the constant shape (B, S, 1), its 1/N and eps written as full (B, S, 1) tensors, its gamma tiled to
(B, S, D). Each has an equivalent that holds for any row count, which the matcher's own checks guarantee:

- a reshape that only puts back the reduced axes (the matcher checked its target is the keep_dims shape) is
  `expand_dims` over those axes; a reshape to the shape it already has is `identity`;
- a constant operand whose elements are all equal (the matcher read it as one number, and checked it does not
  broadcast the op's output) is that number;
- an operand tiled along the rows from a value of size 1 there is that value (broadcasting repeats it alike).

The stand-ins are evaluated in place of the originals (the interpreter's overlay), for the original chain and
its rewrite alike; the program is not changed. Where some op has no stand-in, the check feeds the whole shape.
"""

import numpy as np

from ..graph.dtypes import INT32
from ..graph.shapes import same_shape, varies_off
from ..graph.spec_graph import op_name
from ..graph.emit import OpEmitter

ELEMENTWISE = ("add", "sub", "mul", "real_div", "maximum", "minimum")
PASSING = ("cast", "identity")


def row_free_substitutes(view, match):
    """({value name: Operation} standing in for the shape-bound ops of `match`, complete): `complete` is False
    when some op bakes the row count in and has no stand-in."""
    emitter = OpEmitter(view.names_in_use())
    subs, complete = {}, True
    rank, axes = view.rank(match.x), set(match.axes)
    for name in match.ops:
        op = view.op_by_name.get(name)
        if op is None:
            continue
        if op.type == "reshape":
            made = _reshape(view, emitter, op, rank, sorted(axes))
            complete &= made is not None
            subs.update(made or {})
        elif op.type in ELEMENTWISE:
            for param in ("x", "y"):
                made = _uniform(view, emitter, view.arg(op, param), rank, axes)
                complete &= made is not False
                subs.update(made or {})
    for operand in match.operands.values():
        if operand is not None and varies_off(view, operand, rank, axes):
            made = _untiled(view, emitter, operand, rank, axes)
            complete &= made is not None
            subs.update(made or {})
    return subs, complete


def _reshape(view, emitter, op, rank, axes):
    source, out = view.arg(op, "x"), op.outputs[0]
    if source is None or view.rank(out.name) != rank:
        return None
    reduced = _reduced_from(view, op)
    kept = reduced is not None and view.rank(reduced) == rank and all(
        view.dim(out.name, i) == (1 if i in axes else view.dim(reduced, i)) for i in range(rank))
    if view.rank(source) == rank - len(axes) and kept:
        axes_op, axes_name = emitter.const(f"{out.name}_rows_axes", np.array(axes, np.int32), INT32)
        stand_in, _ = emitter.op("expand_dims", {"x": source, "axes": axes_name}, out.type, output_name=out.name,
                                 name=op_name(op))
        return {axes_name: axes_op, out.name: stand_in}
    if same_shape(view, source, out.name) and None not in (view.dim(source, i) for i in range(rank)):
        stand_in, _ = emitter.op("identity", {"x": source}, out.type, output_name=out.name, name=op_name(op))
        return {out.name: stand_in}
    return None


def _reduced_from(view, reshape_op):
    """The tensor the statistic a reshape restores was reduced from (through casts and constant scales), or
    None: the reshape's target must be that tensor's shape with the reduced axes 1, whatever the matcher saw."""
    value = view.arg(reshape_op, "x")
    for _ in range(64):
        op = view.producer(value) if value is not None else None
        if op is None:
            return None
        if op.type in ("reduce_mean", "reduce_sum", "reduce_sum_square"):
            return view.arg(op, "x")
        value = view.arg(op, "x")
    return None


def _uniform(view, emitter, value, rank, axes):
    """A stand-in for a constant operand that is not 1 along a row axis: {} if none is needed, False if it
    varies there (no stand-in)."""
    if value is None or not view.is_const(value):
        return {}
    if not varies_off(view, value, rank, axes):
        return {}
    array = view.const_value(value)
    if array is None or array.size == 0 or not np.all(array == array.reshape(-1)[0]):
        return False
    dtype = view.dtype(value)
    stand_in, name = emitter.const(f"{value}_rows", np.asarray(array.reshape(-1)[0]), dtype)
    stand_in.outputs[0].name = value
    return {value: stand_in}


def _untiled(view, emitter, operand, rank, axes):
    """The value an operand tiles along the rows, standing in for it, or None."""
    value = operand
    while True:
        op = view.producer(value)
        if op is None:
            return None
        if op.type in PASSING:
            value = view.arg(op, "x")
            continue
        if op.type != "tile":
            return None
        source = view.arg(op, "x")
        if source is None or view.rank(source) != rank or varies_off(view, source, rank, axes):
            return None
        if view.dtype(source) != view.dtype(operand):
            return None
        stand_in, _ = emitter.op("identity", {"x": source}, view.types[operand], output_name=operand,
                                 name=f"{operand}_rows")
        return {operand: stand_in}
