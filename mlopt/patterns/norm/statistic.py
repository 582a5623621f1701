"""A norm's statistic: the reduction of a square, and the walk from it to its root.

The walk reads the value under the root as `mean * scale + offset` (+ `offset_m2 / m^2` for a max-scaled chain
that rescales its eps) from the stored constants, however converters fold them: eps before or after the 1/N
scale, a sum scaled to a mean by `mul(1/N)` or `real_div(N)`, constants written as full tensors or broadcast by
`tile`. It accepts `reshape`/`expand_dims` that only put back the axes a keep_dims=False reduction dropped, and
`tile` along the reduced axes; anything else ends the attempt with the reason.
"""

import math
from dataclasses import dataclass

import numpy as np

from ...graph.dtypes import FLOAT16, NUMPY
from ...graph.shapes import same_shape
from ..walk import (
    consumer_types,
    flag,
    follow,
    int_axes,
    other_param,
    producer_through_casts,
    same_tensor,
    scalar_const,
    sole_consumer,
)

RSQRT_DEFAULT_EPSILON = 1e-12  # MIL's default for rsqrt(epsilon)
REDUCTIONS = ("reduce_mean", "reduce_sum", "reduce_sum_square")
ROOTS = ("rsqrt", "sqrt", "pow")
SHAPE_OPS = ("reshape", "expand_dims", "tile")
AFFINE_OPS = ("add", "mul", "real_div")
MAX_STEPS = 64  # a statistic's walk to its root; a longer one is not a norm


def square_of(view, reduce_op):
    """(square op or None, squared value, exponent) if the reduced value is a power of something, else None.
    reduce_sum_square squares by itself (square op None)."""
    if view.op_type(reduce_op) == "reduce_sum_square":
        x = view.arg(reduce_op, "x")
        return None if x is None else (None, x, 2.0)
    op = producer_through_casts(view, view.arg(reduce_op, "x"))
    if op is None:
        return None
    if view.op_type(op) == "square":
        return op, view.arg(op, "x"), 2.0
    if view.op_type(op) == "pow":
        y = scalar_const(view, op, "y")
        if y is None or view.arg(op, "x") is None:
            return None
        return op, view.arg(op, "x"), y
    if view.op_type(op) == "mul":
        a, b = view.arg(op, "x"), view.arg(op, "y")
        if a is not None and b is not None and same_tensor(view, a, b):
            return op, a, 2.0
    return None


def reduction_axes(view, trace, op, rank, what="reduction"):
    """The op's constant axes, non-negative, checked against `rank`."""
    axes = view.const(op, "axes")
    if axes is None:
        trace.fail(f"{what} axes are not constant")
    axes = int_axes(axes)
    if axes is None:
        trace.fail(f"{what} axes are not integers")
    if not axes or any(not -rank <= a < rank for a in axes):
        trace.fail(f"axes {axes} out of range for rank {rank}")
    axes = tuple(a % rank for a in axes)
    if len(set(axes)) != len(axes):
        trace.fail(f"axes {list(axes)} repeat")
    return axes


@dataclass
class Statistic:
    root: object  # the root op: rsqrt, sqrt or pow(-0.5)
    scale: float  # the value under the root is mean * scale + offset (+ offset_m2 / m^2)
    offset: float  # eps as added (plus rsqrt's own epsilon)
    offset_m2: float = 0.0  # eps added as eps / m^2 (a max-scaled chain that rescales it: exact)
    restored: bool = True  # False: keep_dims=False and the reduced axes come back only after the root
    subtracted: str = None  # the E[x]^2 a variance walk subtracted (its ops are the caller's to take)


def statistic_to_root(view, trace, reduction, like, axes, label="mean square", norm="RMSNorm", scale_of=None, subtract=None):
    """Walk from the reduction's output to the root. `like` is the tensor reduced (its shape gives N and the
    shape a keep_dims=False reduction must be reshaped back to). `scale_of(value)`, if given, reads a
    non-constant added term as eps / m^2 and returns eps (or None). `subtract(value)`, if given, is a predicate
    accepting sub(statistic, value) (E[x^2] - E[x]^2), preferred over other consumers; the caller takes the
    value's ops (`Statistic.subtracted`). Nothing may scale the statistic after it. `label` and `norm` word the reasons."""
    is_sum = view.op_type(reduction) in ("reduce_sum", "reduce_sum_square")
    n = None
    if is_sum:
        dims = [view.dim(like, a) for a in axes]
        n = None if any(d is None for d in dims) else _as_float(math.prod(dims))
    restored = flag(view.const(reduction, "keep_dims"))
    value, k, e, e_m2 = view.output(reduction), 1.0, 0.0, 0.0
    scale_ops, k_at_sub, subtracted = [], None, None
    for _ in range(MAX_STEPS):
        step = accepted = None
        if subtract is not None and k_at_sub is None:  # E[x^2] may feed another chain too: the subtraction first
            step = accepted = follow(view, value, ("sub",), accept=lambda st: st.param == "x" and subtract(view.arg(st.op, "y")))
        step = step or follow(view, value, ROOTS + AFFINE_OPS + SHAPE_OPS + ("maximum",) + (("sub",) if subtract else ()))
        if step is None:
            what = f"{label} + eps" if e else label
            wanted = "a square root" if e else "add/rsqrt/sqrt/pow"
            trace.fail(f"{what} feeds {consumer_types(view, value)}, not {wanted}")
        op, kind = step.op, view.op_type(step.op)
        if kind in ROOTS:
            trace.take(*step.casts, op)
            e += _valid_epsilon(trace, root_epsilon(view, trace, op), norm)
            break
        if kind in SHAPE_OPS:
            restored = _shape_step(view, trace, op, like, axes, restored)
        elif kind == "sub":
            if step is not accepted and (step.param != "x" or not subtract(view.arg(op, "y"))):
                trace.fail(f"subtracts something other than E[x]^2 from the {label}")
            if k_at_sub is not None:
                trace.fail(f"subtracts E[x]^2 from the {label} twice")
            if not same_shape(view, view.output(op), value):
                trace.fail(f"subtracting E[x]^2 broadcasts the {label} to another shape")
            k_at_sub, subtracted = k, view.arg(op, "y")
        elif kind == "maximum":
            if uniform_const(view, op, other_param(op, step.param)) != 0.0:
                trace.fail(f"clamps the {label} at something other than 0")
            # max(., 0) under a mean of squares (E[x^2] - E[x]^2 rounding below 0) leaves the value as it is
        elif kind == "add":
            c = uniform_const(view, op, other_param(op, step.param))
            if c is None:
                c_m2 = scale_of(view.arg(op, other_param(op, step.param))) if scale_of else None
                if c_m2 is None:
                    trace.fail(f"adds a non-constant to the {label}")
                e_m2 += c_m2
            else:
                e += _valid_epsilon(trace, c, norm)
        elif kind == "mul":
            c = uniform_const(view, op, other_param(op, step.param))
            if c is None:
                trace.fail(f"multiplies the {label} by a non-constant")
            k, e, e_m2 = k * c, e * c, e_m2 * c
            scale_ops.append((op, other_param(op, step.param)))
        else:  # real_div
            if step.param != "x":
                trace.fail(f"divides by the {label}")
            c = uniform_const(view, op, "y")
            if c is None:
                trace.fail(f"divides the {label} by a non-constant")
            k, e, e_m2 = (k / c, e / c, e_m2 / c) if c != 0 else (math.inf, math.inf, math.inf)
            scale_ops.append((op, "y"))
        trace.take(*step.casts, op)
        value = view.output(op)
    else:
        trace.fail(f"no square root within {MAX_STEPS} ops of the {label}")
    root = op
    if subtract is not None and k_at_sub != k:
        trace.fail(f"the {label} is scaled after E[x]^2 is subtracted" if k_at_sub is not None else "no E[x]^2 subtracted")
    if is_sum:
        mean_scale = _mean_scale(view, trace, reduction, k, n, scale_ops)
    else:
        mean_scale = k
        if not math.isfinite(k) or abs(k - 1.0) > _tolerance(view, scale_ops):
            trace.fail(f"the {label} is scaled by {k:g}: not a mean")
    for eps in (e, e_m2, e + e_m2):
        if not math.isfinite(eps) or eps < 0:
            trace.fail(f"epsilon is {eps:g}: not a valid {norm} epsilon")
    return Statistic(root, mean_scale, e, e_m2, restored, subtracted)


def uniform_const(view, op, param):
    """A literal input holding one number, as a float: a scalar, or a constant whose elements are all equal and
    that does not broadcast the op's output beyond its other operand (StableHLO writes 1/N and eps as full
    tensors). None otherwise."""
    c = scalar_const(view, op, param)
    if c is not None:
        return c
    value = view.const(op, param)
    source = view.arg(op, param)
    for _ in range(MAX_STEPS):  # a const broadcast by tile/reshape/expand_dims/cast holds its one number still
        producer = view.producer(source) if value is None and source is not None else None
        if producer is None or view.op_type(producer) not in ("tile", "reshape", "expand_dims", "cast"):
            break
        source = view.arg(producer, "x")
        value = view.const_value(source) if source is not None else None
    if value is None or value.size == 0 or value.dtype.kind not in "fiu" or not np.all(value == value.reshape(-1)[0]):
        return None
    other = view.arg(op, other_param(op, param))
    out = view.output(op)
    if other is None or view.rank(out) != view.rank(other):
        return None
    if any(view.dim(out, i) != view.dim(other, i) for i in range(view.rank(out))):
        return None
    return float(value.reshape(-1)[0])


def _valid_epsilon(trace, eps, norm):
    if not math.isfinite(eps) or eps < 0:
        trace.fail(f"epsilon is {eps:g}: not a valid {norm} epsilon")
    return eps


def _mean_scale(view, trace, reduction, k, n, scale_ops):
    """A sum's total scale k times N must be 1 (a mean) within the rounding of the constants' dtype."""
    if not scale_ops:
        trace.fail(f"{view.op_type(reduction)}, not reduce_mean: no 1/N scale")
    if n is None:
        trace.fail(f"{view.op_type(reduction)} over an axis of unknown size: cannot check its 1/N scale")
    scale = k * n
    if not math.isfinite(scale) or abs(scale - 1.0) > _tolerance(view, scale_ops):
        (op, param), *more = scale_ops
        if not more:
            c = uniform_const(view, op, param)
            mul = view.op_type(op) == "mul"
            trace.fail(f"{view.op_type(reduction)} {'scaled' if mul else 'divided'} by {c:g}, not {'1/' if mul else ''}{n:g}")
        trace.fail(f"{view.op_type(reduction)} scaled by {k:g} in all, not 1/{n:g}")
    return scale


def _tolerance(view, scale_ops):
    """How far from 1 the product of the scale constants may be: 1/N as one fp16 constant rounds it (fp16 keeps
    11 bits), or fp32 rounding. Fixed, not per op: exact constants (a mul by 1) earn no slack."""
    fp16 = any(view.dtype(view.arg(op, param) or view.output(op)) == FLOAT16 for op, param in scale_ops)
    return 2.0**-10 if fp16 else 1e-6


def _shape_step(view, trace, op, like, axes, restored):
    """reshape/expand_dims that put back the reduced axes as size 1, or tile along the reduced axes only.
    Returns whether the statistic now has the keep_dims shape."""
    kind, out, rank = view.op_type(op), view.output(op), view.rank(like)
    if kind == "tile":
        reps = int_axes(view.const(op, "reps"))
        if not restored or reps is None or len(reps) != rank or any(r != 1 for i, r in enumerate(reps) if i not in axes):
            trace.fail("tiles the statistic along an axis it does not reduce")
        return True
    if view.rank(out) != rank or any(view.dim(out, a) != 1 for a in axes):
        trace.fail(f"{kind} of the statistic to another shape than the reduction with keep_dims")
    if kind == "reshape" and view.const(op, "shape") is None:
        trace.fail("reshape of the statistic to a shape computed at run time: cannot check it keeps the rows")
    for i in range(rank):
        if i in axes:
            continue
        have, want = view.dim(out, i), view.dim(like, i)
        if kind == "reshape" and (have is None or want is None):
            trace.fail("reshape of the statistic over an axis of unknown size: cannot check it keeps the rows")
        if have is not None and want is not None and have != want:
            trace.fail(f"{kind} of the statistic to another shape than the reduction with keep_dims")
    return True


def is_square_root(view, root):
    """sqrt, or pow(0.5), which is the same function (NaN below 0, exact at 0): the root a chain divides by."""
    return view.op_type(root) == "sqrt" or (view.op_type(root) == "pow" and scalar_const(view, root, "y") == 0.5)


def root_epsilon(view, trace, root):
    """rsqrt's own epsilon (MIL's default when absent); checks pow's exponent (-0.5, or 0.5: a square root)."""
    if view.op_type(root) == "pow":
        y = scalar_const(view, root, "y")
        if y not in (-0.5, 0.5):
            trace.fail(f"root is pow({'?' if y is None else f'{y:g}'}), not pow(-0.5) or pow(0.5)")
    if view.op_type(root) != "rsqrt":
        return 0.0
    if view.const(root, "epsilon") is None and not view.has_input(root, "epsilon"):
        return float(NUMPY.get(view.dtype(view.arg(root, "x")), np.float32)(RSQRT_DEFAULT_EPSILON))
    eps = scalar_const(view, root, "epsilon")
    if eps is None:
        trace.fail("rsqrt epsilon is not a constant scalar")
    return eps


def through_shape_ops(view, trace, value, axes, like=None, restored=True):
    """Follow a per-row statistic through tile (along the reduced axes only) and reshapes that keep its shape;
    unless `restored`, the first reshape/expand_dims must put back the axes a keep_dims=False reduction dropped
    (`like` is the tensor reduced)."""
    for _ in range(MAX_STEPS):
        use = sole_consumer(view, value)
        if use is None or use.param != "x" or view.op_type(use.op) not in SHAPE_OPS:
            break
        op, rank = use.op, view.rank(value)
        if not restored:
            restored = _shape_step(view, trace, op, like, axes, False)
        elif view.op_type(op) == "tile":
            reps = int_axes(view.const(op, "reps"))
            if reps is None or len(reps) != rank or any(r != 1 for i, r in enumerate(reps) if i not in axes):
                break
        else:  # a reshape/expand_dims to the shape the value has; a reshape only where that shape is known
            out = view.output(op)
            if not same_shape(view, out, value):
                break
            if view.op_type(op) == "reshape" and (view.const(op, "shape") is None or None in (view.dim(out, i) for i in range(rank))):
                break
        trace.take(op)
        value = view.output(op)
    if not restored:
        trace.fail("keep_dims is false")
    return value


def _as_float(n):
    try:
        return float(n)
    except OverflowError:  # a product of declared sizes beyond float range
        return math.inf
