"""The RMSNorm pattern: `x * rsqrt(mean(x^2, axes) + eps) [* gamma]` in every spelling converters emit.

Target pattern (each arrow may cross `cast` ops):

    [abs -> reduce_max = m;  real_div(x, m)]          coremltools 9's max-scaled torch.nn.RMSNorm lowering
    square(.) | pow(., 2) | mul(., .)
      -> reduce_mean(axes, keep_dims=True) | reduce_sum(axes, keep_dims=True) -> mul(1/N) | real_div(N)
      -> [add(eps) (either side)]
      -> rsqrt(epsilon) | pow(-0.5) | sqrt
      -> mul(x, .) (either side)                     after rsqrt/pow, or after real_div(1, sqrt)
         real_div(x, .)                               after sqrt  [after mul(sqrt, m) when max-scaled]
      -> [mul(gamma) (either side), gamma constant per call]
      -> [cast back to x's dtype]

Conditions: the squared and the scaled tensor are one tensor (up to float casts); the power is exactly 2 and the
root exactly -0.5 or a square root with nothing added after it; constant axes; keep_dims; a reduce_sum's scale
is 1/N for the reduced size N; the input is not mean-centred (that is a LayerNorm). Matching is anchored at every
`reduce_mean`/`reduce_sum` of a squared value; a candidate that fails a condition is reported with the reason.
"""

import math
from dataclasses import dataclass

import numpy as np

from ..graph.dtypes import FLOAT16, FLOATS, NUMPY, name as dtype_name
from ..patterns.status import NOT_THIS_PATTERN
from ..patterns.trace import attempt
from ..patterns.walk import (
    cast_ancestry,
    casts_between,
    casts_up_to,
    follow,
    other_param,
    producer_through_casts,
    same_tensor,
    scalar_const,
    sole_consumer,
    unwrap_lossless,
)
from .base import Match

RSQRT_DEFAULT_EPSILON = 1e-12  # MIL's default for rsqrt(epsilon)
MAX_SCALED_NOTE = (
    "coremltools' max-scaled torch.nn.RMSNorm lowering: it computed x / sqrt(mean(x^2) + eps * max|x|^2) and gave "
    "NaN on an all-zero row; rewritten with the true eps"
)


def match_rms_norm(view, anchor):
    """The RMSNorm pattern anchored at `anchor`, on any graph/interface.py adapter: a status (patterns/status.py)."""
    if view.op_type(anchor) not in ("reduce_mean", "reduce_sum"):
        return NOT_THIS_PATTERN
    square = _square_of(view, anchor)
    if square is None:
        return NOT_THIS_PATTERN
    square_op, base, exponent = square

    def body(trace):
        prescale = _max_prescale(view, trace, base)
        trace.take(square_op)
        trace.take(*casts_between(view, view.arg(anchor, "x"), view.output(square_op)))
        trace.take(anchor)
        return _match_rest(view, trace, anchor, base, exponent, prescale)

    return attempt(view, body)


def _square_of(view, reduce_op):
    """(square op, squared value, exponent) if the reduced value is a power of something, else None."""
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


@dataclass
class _Prescale:
    x: str  # the unscaled tensor
    m: str  # max|x| over the axes
    axes: list  # reduce_max's axes (Python ints)


def _max_prescale(view, trace, base):
    """real_div(x, reduce_max(abs(x))) as the squared value: coremltools' torch.nn.RMSNorm lowering."""
    div = producer_through_casts(view, base)
    if div is None or view.op_type(div) != "real_div":
        return None
    x, m = view.arg(div, "x"), view.arg(div, "y")
    red = producer_through_casts(view, m)
    if x is None or red is None or view.op_type(red) != "reduce_max":
        return None
    abs_op = producer_through_casts(view, view.arg(red, "x"))
    if abs_op is None or view.op_type(abs_op) != "abs" or not same_tensor(view, view.arg(abs_op, "x"), x):
        return None
    trace.take(abs_op, red, div)
    if not _flag(view.const(red, "keep_dims")):
        trace.fail("max|x| pre-scale has keep_dims false")
    axes = _int_axes(view.const(red, "axes"))
    if axes is None:
        trace.fail("max|x| pre-scale axes are not constant integers")
    return _Prescale(x=x, m=m, axes=axes)


def _match_rest(view, trace, reduce_op, base, exponent, prescale):
    if exponent != 2.0:
        trace.fail(f"power is {exponent:g}, not 2")
    axes = view.const(reduce_op, "axes")
    if axes is None:
        trace.fail("reduction axes are not constant")
    axes = _int_axes(axes)
    if axes is None:
        trace.fail("reduction axes are not integers")
    if not _flag(view.const(reduce_op, "keep_dims")):
        trace.fail("keep_dims is false")
    squared = prescale.x if prescale else base
    rank = view.rank(squared)
    if not axes or any(not -rank <= a < rank for a in axes):
        trace.fail(f"axes {axes} out of range for rank {rank}")
    axes = tuple(a % rank for a in axes)
    if len(set(axes)) != len(axes):
        trace.fail(f"axes {list(axes)} repeat")
    pre_axes = prescale.axes if prescale else []
    if prescale and (any(not -rank <= a < rank for a in pre_axes) or sorted(a % rank for a in pre_axes) != sorted(axes)):
        trace.fail("max|x| pre-scale reduces over other axes than the mean")

    value = view.output(reduce_op)
    mean_scale = 1.0
    if view.op_type(reduce_op) == "reduce_sum":
        value, mean_scale = _mean_from_sum(view, trace, value, squared, axes)

    eps_add = 0.0
    step = follow(view, value, ("add", "rsqrt", "sqrt", "pow"))
    if step is None:
        trace.fail(f"mean square feeds {_consumer_types(view, value)}, not add/rsqrt/sqrt/pow")
    if view.op_type(step.op) == "add":
        eps = scalar_const(view, step.op, other_param(step.op, step.param))
        if eps is None:
            trace.fail("adds a non-constant to the mean square")
        eps_add = eps
        trace.take(*step.casts, step.op)
        value = view.output(step.op)
        step = follow(view, value, ("rsqrt", "sqrt", "pow", "add", "real_div", "mul"))
        if step is None or view.op_type(step.op) not in ("rsqrt", "sqrt", "pow"):
            trace.fail(f"mean square + eps feeds {_consumer_types(view, value)}, not a square root")
    trace.take(*step.casts, step.op)
    root = step.op
    eps_root = _root_epsilon(view, trace, root)
    for eps in (eps_add, eps_root, eps_add + eps_root):
        if not math.isfinite(eps) or eps < 0:
            trace.fail(f"epsilon is {eps:g}: not a valid RMSNorm epsilon")

    if prescale:
        if view.op_type(root) != "sqrt":
            trace.fail("max|x| pre-scaled chain without sqrt")
        norm_op, scaled = _divide_by_rescaled_root(view, trace, root, prescale)
    elif view.op_type(root) == "sqrt":
        norm_op, scaled = _divide_by_root(view, trace, root, base)
    else:
        norm_op, scaled = _scale_by_inverse(view, trace, view.output(root), base)

    if scaled is None or not same_tensor(view, squared, scaled):
        trace.fail("squares one tensor and scales another")
    x = unwrap_lossless(view, scaled)
    above_x = set(cast_ancestry(view, x))
    trace.take(*casts_up_to(view, squared, above_x), *casts_up_to(view, scaled, above_x))
    _check_not_mean_centred(view, trace, x)
    dtype = view.dtype(x)
    if dtype not in FLOATS or not view.is_float_tensor(x):
        trace.fail(f"unsupported dtype {dtype_name(dtype)}")
    if view.rank(x) != rank:
        trace.fail(f"x has rank {view.rank(x)}, the squared tensor rank {rank}")
    output_op, gamma = _gamma(view, trace, norm_op, dtype)
    if not view.is_float_tensor(view.output(output_op)):
        trace.fail(f"the chain's output '{view.output(output_op)}' is not a float tensor")
    if view.dim(x, axes[0]) is None:
        trace.fail(f"normalised axis {axes[0]} has unknown size")
    if any(view.dim(x, a) == 0 for a in axes):
        trace.fail("a normalised axis has size 0: nothing to normalise")
    if len({id(view.block(op)) for op in trace.ops}) != 1:
        trace.fail("chain spans several blocks")
    return Match(
        x=x,
        axes=axes,
        output=view.output(output_op),
        output_op=output_op,
        ops=trace.op_names(),
        dtype=dtype,
        operands={"gamma": gamma},
        params={"epsilon": eps_add + eps_root},
        facts={"max_scaled": prescale is not None, "mean_scale": mean_scale},
        note=MAX_SCALED_NOTE if prescale else None,
    )


def _mean_from_sum(view, trace, value, squared, axes):
    """reduce_sum followed by mul(1/N) or real_div(N), N the reduced size: a mean. Returns (mean, scale * N)."""
    dims = [view.dim(squared, a) for a in axes]
    step = follow(view, value, ("mul", "real_div"), accept=lambda st: scalar_const(view, st.op, other_param(st.op, st.param)) is not None)
    if step is None or (view.op_type(step.op) == "real_div" and step.param != "x"):
        trace.fail("reduce_sum, not reduce_mean: no 1/N scale")
    if any(d is None for d in dims):
        trace.fail("reduce_sum over an axis of unknown size: cannot check its 1/N scale")
    n = _as_float(math.prod(dims))  # Python ints: exact, whatever the declared sizes
    c = scalar_const(view, step.op, other_param(step.op, step.param))
    if view.op_type(step.op) == "mul":
        scale = c * n
    else:
        scale = n / c if c != 0 else math.inf
    const_dtype = view.dtype(view.arg(step.op, other_param(step.op, step.param)) or step.via)
    tolerance = 2.0**-10 if const_dtype == FLOAT16 else 1e-6  # 1/N as the constant's dtype rounds it
    if not math.isfinite(scale) or abs(scale - 1.0) > tolerance:
        scaled = f"scaled by {c:g}" if view.op_type(step.op) == "mul" else f"divided by {c:g}"
        trace.fail(f"reduce_sum {scaled}, not {'1/' if view.op_type(step.op) == 'mul' else ''}{n:g}")
    trace.take(*step.casts, step.op)
    return view.output(step.op), scale


def _root_epsilon(view, trace, root):
    if view.op_type(root) == "pow":
        y = scalar_const(view, root, "y")
        if y != -0.5:
            trace.fail(f"root is pow({'?' if y is None else f'{y:g}'}), not pow(-0.5)")
    if view.op_type(root) != "rsqrt":
        return 0.0
    if view.const(root, "epsilon") is None and not view.has_input(root, "epsilon"):
        return float(NUMPY.get(view.dtype(view.arg(root, "x")), np.float32)(RSQRT_DEFAULT_EPSILON))
    eps = scalar_const(view, root, "epsilon")
    if eps is None:
        trace.fail("rsqrt epsilon is not a constant scalar")
    return eps


def _scale_by_inverse(view, trace, inv, base):
    """mul(x, inv) in either operand order; prefer the mul that scales the squared tensor if there are several."""
    step = follow(view, inv, ("mul",), accept=lambda st: _scales(view, st, base)) or follow(view, inv, ("mul",))
    if step is None:
        trace.fail(f"inverse root feeds {_consumer_types(view, inv)}, not mul")
    trace.take(*step.casts, step.op)
    return step.op, view.arg(step.op, other_param(step.op, step.param))


def _scales(view, step, base):
    other = view.arg(step.op, other_param(step.op, step.param))
    return other is not None and same_tensor(view, base, other)


def _divide_by_root(view, trace, sqrt_op, base):
    """After `sqrt`: real_div(x, s) normalises directly; real_div(1, s) is an inverse root for a later mul."""
    s = view.output(sqrt_op)
    step = follow(view, s, ("real_div",), accept=lambda st: st.param == "y" and (_scales(view, st, base) or _is_one(view, st.op)))
    step = step or follow(view, s, ("real_div",), accept=lambda st: st.param == "y")
    if step is None and follow(view, s, ("add", "inverse")) is not None:
        trace.fail("epsilon added outside the square root")
    if step is None:
        trace.fail(f"square root feeds {_consumer_types(view, s)}, not real_div(x, sqrt)")
    trace.take(*step.casts, step.op)
    if view.const(step.op, "x") is None:
        return step.op, view.arg(step.op, "x")
    if not _is_one(view, step.op):
        trace.fail("divides a constant other than 1 by the square root")
    return _scale_by_inverse(view, trace, view.output(step.op), base)


def _divide_by_rescaled_root(view, trace, sqrt_op, prescale):
    """Max-scaled form: mul(sqrt, m) (either order), then real_div(x, .)."""
    s = view.output(sqrt_op)
    step = follow(view, s, ("mul",), accept=lambda st: same_tensor(view, view.arg(st.op, other_param(st.op, st.param)) or "", prescale.m))
    if step is None:
        trace.fail(f"max|x| pre-scaled root feeds {_consumer_types(view, s)}, not mul(., max|x|)")
    trace.take(*step.casts, step.op)
    rms = view.output(step.op)
    step = follow(view, rms, ("real_div",), accept=lambda st: st.param == "y")
    if step is None:
        trace.fail(f"rescaled root feeds {_consumer_types(view, rms)}, not real_div(x, .)")
    trace.take(*step.casts, step.op)
    return step.op, view.arg(step.op, "x")


def _is_one(view, div_op):
    return scalar_const(view, div_op, "x") == 1.0


def _gamma(view, trace, norm_op, dtype):
    """Absorb a following `mul(gamma)` (gamma constant per call) and a cast back to x's dtype."""
    output_op, gamma = norm_op, None
    casts, use = [], sole_consumer(view, view.output(norm_op))
    while use is not None and view.op_type(use.op) == "cast" and all(use.op is not c for c in casts):  # a cycle ends it
        casts.append(use.op)
        use = sole_consumer(view, view.output(use.op))
    if use is not None and view.op_type(use.op) == "mul" and use.param in ("x", "y"):
        weight = view.arg(use.op, other_param(use.op, use.param))
        if weight is not None and view.is_constant_expr(weight):
            trace.take(*casts)
            trace.take(use.op, label="mul(gamma)")
            output_op, gamma = use.op, weight
    use = sole_consumer(view, view.output(output_op))
    if use is not None and view.op_type(use.op) == "cast" and view.dtype(view.output(use.op)) == dtype:
        trace.take(use.op)
        output_op = use.op
    return output_op, gamma


def _check_not_mean_centred(view, trace, x):
    """x = sub(y, reduce_mean(y)) makes the chain a LayerNorm: a different op, not ours to rewrite."""
    for value in cast_ancestry(view, x):
        op = view.producer(value)
        if op is None or view.op_type(op) != "sub":
            continue
        y, mean_op = view.arg(op, "x"), producer_through_casts(view, view.arg(op, "y"))
        if mean_op is not None and view.op_type(mean_op) == "reduce_mean" and y is not None:
            if same_tensor(view, view.arg(mean_op, "x"), y):
                trace.fail("input is mean-centred (x - mean(x)): a LayerNorm, not an RMSNorm")


def _as_float(n):
    try:
        return float(n)
    except OverflowError:  # a product of declared sizes beyond float range
        return math.inf


def _flag(value):
    """A literal bool flag (keep_dims) as a bool; False unless it is a single element."""
    return value is not None and value.size == 1 and bool(value.reshape(()))


def _int_axes(value):
    """A literal axes tensor as Python ints (exact for any integer width); None unless it holds integers."""
    if value is None or value.dtype.kind not in "iu":
        return None
    return [int(a) for a in value.reshape(-1)]


def _consumer_types(view, value):
    types = sorted({view.op_type(u.op) if u.op is not None else "a block output" for u in view.consumers(value)})
    return "/".join(types) or "nothing"
