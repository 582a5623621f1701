"""Centring: a mean read backwards from the value a chain subtracts, and `x - mean(x)` recognised.

Converters broadcast a per-row mean in several spellings (keep_dims, or a keep_dims=False reduction put back by
reshape/expand_dims, tiled, a sum scaled by 1/N); a mean must line up with x as keep_dims would, and its scale
be 1 to its constants' rounding, or it is no centring.
"""

import math
from dataclasses import dataclass

from ..walk import cast_ancestry, int_axes, other_param, same_tensor
from .statistic import MAX_STEPS, _tolerance, uniform_const


@dataclass
class Mean:
    """A mean over `axes` of `x`, read backwards from the value that broadcasts it."""

    reduction: object
    x: str
    axes: tuple
    ops: list  # every op from the reduction to the value, the reduction included
    scale: float = 1.0  # the value is the mean times this (1/N as its constant rounds it, for a sum)
    count: float = 1.0  # N for a reduce_sum (the 1/N its scale should be), 1 for a reduce_mean
    exact: bool = True  # the scale is 1 to its constants' rounding (False only from mean_of(exact=False))

    def off_scale_reason(self, view):
        """Why a scaled reduction read with mean_of(exact=False) is no mean."""
        kind, k = view.op_type(self.reduction), self.scale / self.count
        want = f"1/{self.count:g}" if self.count != 1 else "1"
        return f"the mean's {kind} is scaled by {k:g}, not {want}: not a mean"


def mean_of(view, value, exact=True):
    """The mean `value` holds: reduce_mean, or reduce_sum scaled by 1/N, through casts, constant scales,
    reshape/expand_dims/tile (the spellings converters broadcast a per-row mean with). None if it is not one, or
    if its scale is off 1 by more than its constants' rounding (with exact=False: a Mean with `exact` False, for
    a matcher to name the scale). The caller checks the value's shape."""
    ops, k, v, scale_ops = [], 1.0, value, []
    for _ in range(MAX_STEPS):
        op = view.producer(v) if v is not None else None
        if op is None:
            return None
        kind = view.op_type(op)
        ops.append(op)
        if kind in ("reduce_mean", "reduce_sum"):
            x, axes = view.arg(op, "x"), int_axes(view.const(op, "axes"))
            if x is None or not axes or any(not -view.rank(x) <= a < view.rank(x) for a in axes):
                return None
            axes = tuple(sorted(a % view.rank(x) for a in axes))
            count = 1.0
            if kind == "reduce_sum":
                dims = [view.dim(x, a) for a in axes]
                count = math.inf if None in dims else float(math.prod(dims))
                k = k * count
            close = math.isfinite(k) and abs(k - 1.0) <= _tolerance(view, scale_ops)
            if (exact and not close) or not math.isfinite(k):
                return None
            if not _broadcast_back(view, ops, x, axes):
                return None
            return Mean(op, x, axes, ops, k, count, close)
        if kind in ("cast", "reshape", "expand_dims", "tile"):
            v = view.arg(op, "x")
        elif kind == "mul":
            for param in ("x", "y"):
                c = uniform_const(view, op, other_param(op, param))
                if c is not None and view.arg(op, param) is not None:
                    k, v = k * c, view.arg(op, param)
                    scale_ops.append((op, other_param(op, param)))
                    break
            else:
                return None
        elif kind == "real_div" and uniform_const(view, op, "y") not in (None, 0.0):
            k, v = k / uniform_const(view, op, "y"), view.arg(op, "x")
            scale_ops.append((op, "y"))
        else:
            return None
    return None


def _broadcast_back(view, ops, x, axes):
    """The shape ops between a reduction and the value that uses its mean put the reduced axes back as size 1
    (reshape/expand_dims, to the keep_dims shape exactly) before any tile, which may only repeat along them: a
    mean put back on another axis (an expand_dims at the wrong place, then tiled) is no mean of these rows."""
    kept = lambda v: broadcasts_as_kept(view, v, x, axes) and all(view.dim(v, a) == 1 for a in axes)  # noqa: E731
    for op in ops[:-1]:  # the reduction is last
        kind = view.op_type(op)
        if kind in ("reshape", "expand_dims"):
            out = view.output(op)
            if not kept(out):
                return False
            if kind == "reshape" and any(view.dim(x, i) is None for i in range(view.rank(x))):
                return False  # a reshape over unknown sizes may move an axis: cannot check it
        elif kind == "tile":
            source, reps = view.arg(op, "x"), int_axes(view.const(op, "reps"))
            if source is None or not kept(source) or reps is None or any(r != 1 for i, r in enumerate(reps) if i not in axes):
                return False
    return True


def broadcasts_as_kept(view, value, x, axes):
    """Whether `value` (a per-row statistic of `x` over `axes`, as an op uses it) lines up with x the way
    keep_dims=True does: x's rank, x's sizes off the axes, 1 or x's size on them. Unknown sizes must agree."""
    rank = view.rank(x)
    if view.rank(value) != rank:
        return False
    for i in range(rank):
        have, want = view.dim(value, i), view.dim(x, i)
        if i in axes:
            if have not in (1, want):
                return False
        elif have != want:
            return False
    return True


@dataclass
class Centred:
    sub: object  # sub(x, mean)
    x: str
    mean: Mean


def centred(view, value, exact=True):
    """`value` as sub(x, mean(x)) (through casts), the mean lined up with x as keep_dims does; or None. With
    exact=False the mean's scale may be off 1 (Mean.exact says so), for a matcher to name it."""
    for v in cast_ancestry(view, value):
        op = view.producer(v)
        if op is None or view.op_type(op) != "sub":
            continue
        x, mean = view.arg(op, "x"), mean_of(view, view.arg(op, "y"), exact=exact)
        if x is not None and mean is not None and same_tensor(view, mean.x, x):
            if broadcasts_as_kept(view, view.arg(op, "y"), x, mean.axes):
                return Centred(op, x, mean)
    return None
