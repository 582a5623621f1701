"""Walking a SpecGraph across `cast` ops, which mixed-precision conversion sprinkles on any edge of a chain.

Upwards, a value's cast ancestry is the value and every value it was cast from. Downwards, `follow` finds the op a
chain continues with, looking through casts, and returns the casts it crossed so they become part of the chain.

Every walk keeps a visited set and stops where it would revisit a value. A validated spec has no cycles
(graph/validate.py), but these walks also run on pymil graphs during conversion and on any graph a caller builds:
a cycle of casts must end a walk, not hang it.
"""

from collections import deque
from dataclasses import dataclass

from ..graph.casts import cast_ancestry  # noqa: F401  (re-exported: patterns walk with it)
from ..graph.dtypes import FLOAT16, FLOAT32


@dataclass
class Step:
    op: object  # the op found
    via: str  # the value through which it consumes the chain (after the casts)
    param: str  # the input parameter bound to `via`
    casts: list  # cast ops crossed on the way, in order


def casts_between(view, start, end):
    """The cast ops from `end` down to `start` (start is in end's downstream cast chain; the walk stops at the
    first value not produced by a cast, or on a cycle)."""
    casts, seen = [], set()
    value = start
    while value != end and value not in seen:
        seen.add(value)
        op = view.producer(value)
        if op is None or view.op_type(op) != "cast":
            break
        casts.append(op)
        value = view.arg(op, "x")
    return casts


def is_widening(view, cast_op):
    """A cast that loses nothing: fp16 -> fp32 (or a no-op cast)."""
    source = view.arg(cast_op, "x")
    if source is None:  # a cast of an inline literal
        return False
    src, dst = view.dtype(source), view.dtype(view.output(cast_op))
    return src == dst or (src == FLOAT16 and dst == FLOAT32)


def follow(view, value, types, accept=None):
    """First consumer of `value` (looking through casts) whose type is in `types` and that `accept(step)` allows."""
    frontier, seen = deque([(value, [])]), {value}
    while frontier:
        current, casts = frontier.popleft()
        for use in view.consumers(current):
            op = use.op
            if op is None:
                continue
            if view.op_type(op) == "cast" and use.param == "x":
                if view.output(op) not in seen:
                    seen.add(view.output(op))
                    frontier.append((view.output(op), casts + [op]))
            elif view.op_type(op) in types:
                step = Step(op, current, use.param, casts)
                if accept is None or accept(step):
                    return step
    return None


def sole_consumer(view, value):
    """The single op using `value` (None if the value has several uses or is a block/function output)."""
    uses = view.consumers(value)
    if len(uses) == 1 and uses[0].op is not None:
        return uses[0]
    return None


def other_param(op, param):
    """For a binary op (x, y), the parameter that is not `param`."""
    return "y" if param == "x" else "x"


def same_tensor(view, a, b):
    """True if `a` and `b` are one tensor, possibly at two float precisions (float casts of a common value)."""
    up_a, up_b = cast_ancestry(view, a), cast_ancestry(view, b)
    common = next((v for v in up_a if v in up_b), None)
    if common is None:
        return False
    path = up_a[: up_a.index(common) + 1] + up_b[: up_b.index(common) + 1]
    return all(view.is_float_tensor(v) for v in path)


def casts_up_to(view, value, stop):
    """The casts from `value` up to the first value in `stop` (casts wrapping x on the way into a chain)."""
    casts, seen = [], set()
    while value not in stop and value not in seen:
        seen.add(value)
        op = view.producer(value)
        if op is None or view.op_type(op) != "cast":
            return casts
        casts.append(op)
        value = view.arg(op, "x")
    return casts


def unwrap_lossless(view, value):
    """`value`, or the narrower tensor it is a lossless widening of: `cast(x16, fp32)` gives `x16`."""
    seen = {value}
    while True:
        op = view.producer(value)
        if op is None or view.op_type(op) != "cast" or not is_widening(view, op) or view.arg(op, "x") in seen:
            return value
        value = view.arg(op, "x")
        seen.add(value)


def producer_through_casts(view, value):
    """The op producing `value` once casts are looked through (None for inputs)."""
    return view.producer(cast_ancestry(view, value)[-1]) if value is not None else None


def scalar_const(view, op, param):
    """A literal input that is a single number, as a float; None otherwise. An operand of a binary op (x, y) of
    shape (1, 1, 1) is one number too, but it raises the op's rank where the other operand's is lower: that is
    no scalar (the chain's shape would change)."""
    value = view.const(op, param)
    if value is None or value.size != 1 or value.dtype.kind not in "fiub":
        return None
    if value.ndim and param in ("x", "y"):
        other = view.arg(op, other_param(op, param))
        if other is None or value.ndim > view.rank(other):
            return None
    return float(value.reshape(()))


def flag(value):
    """A literal bool flag (keep_dims) as a bool; False unless it is a single element."""
    return value is not None and value.size == 1 and bool(value.reshape(()))


def int_axes(value):
    """A literal axes tensor as Python ints (exact for any integer width); None unless it holds integers."""
    if value is None or value.dtype.kind not in "iu":
        return None
    return [int(a) for a in value.reshape(-1)]


def consumer_types(view, value):
    types = sorted({view.op_type(u.op) if u.op is not None else "a block output" for u in view.consumers(value)})
    return "/".join(types) or "nothing"


def constant_float(view, value):
    """True for a float tensor constant per call (a gamma, a beta): no function input or state behind it."""
    return value is not None and view.is_float_tensor(value) and view.is_constant_expr(value)
