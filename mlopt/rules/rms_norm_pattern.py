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

from ..graph.dtypes import FLOAT16, FLOATS, name as dtype_name
from ..patterns.norm import (
    REDUCTIONS,
    Normalised,
    affine,
    centred,
    check_output,
    is_square_root,
    normaliser,
    reduction_axes,
    square_of,
    statistic_to_root,
)
from ..patterns.status import NOT_THIS_PATTERN
from ..patterns.trace import attempt
from ..patterns.walk import (
    cast_ancestry,
    casts_between,
    casts_up_to,
    consumer_types,
    flag,
    follow,
    int_axes,
    other_param,
    producer_through_casts,
    same_tensor,
    scalar_const,
    unwrap_lossless,
)
from .base import Match

L2_KIND = "RMSNorm (L2 form)"
TRICK_KIND = "RMSNorm (LayerNorm trick)"


def match_rms_norm(view, anchor):
    """The RMSNorm pattern anchored at `anchor`, on any graph/interface.py adapter: a status (patterns/status.py)."""
    kind = view.op_type(anchor)
    if kind == "reduce_l2_norm":
        return _l2_form(view, anchor)
    if kind == "layer_norm":
        return _trick_form(view, anchor)
    square = square_of(view, anchor) if kind in REDUCTIONS else None
    if square is None:
        return NOT_THIS_PATTERN
    square_op, base, exponent = square

    def body(trace):
        prescale = _max_prescale(view, trace, base)
        if square_op is not None:
            trace.take(square_op)
            trace.take(*casts_between(view, view.arg(anchor, "x"), view.output(square_op)))
        trace.take(anchor)
        return _match_rest(view, trace, anchor, base, exponent, prescale)

    return attempt(view, body)


@dataclass
class _Prescale:
    x: str  # the unscaled tensor
    m: str  # the divisor: max|x| over the axes, or max(max|x|, floor)
    axes: list  # reduce_max's axes (Python ints)
    floor: float = 0.0  # maximum(max|x|, floor)


def _max_prescale(view, trace, base):
    """real_div(x, m) as the squared value, m = reduce_max(abs(x)) [maximum(., floor)]: coremltools 9's
    torch.nn.RMSNorm lowering, executorch's Core ML llama norm, and floored variants of both."""
    div = producer_through_casts(view, base)
    if div is None or view.op_type(div) != "real_div":
        return None
    x, m = view.arg(div, "x"), view.arg(div, "y")
    top = producer_through_casts(view, m)
    floor, floor_op = 0.0, None
    if top is not None and view.op_type(top) == "maximum":
        for param in ("x", "y"):
            c = scalar_const(view, top, other_param(top, param))
            if c is not None and view.arg(top, param) is not None:
                floor, floor_op, top = c, top, producer_through_casts(view, view.arg(top, param))
                break
    red = top
    if x is None or red is None or view.op_type(red) != "reduce_max":
        return None
    abs_op = producer_through_casts(view, view.arg(red, "x"))
    if abs_op is None or view.op_type(abs_op) != "abs" or not same_tensor(view, view.arg(abs_op, "x"), x):
        return None
    trace.take(abs_op, red, *([floor_op] if floor_op is not None else []), div)
    if not flag(view.const(red, "keep_dims")):
        trace.fail("max|x| pre-scale has keep_dims false")
    axes = int_axes(view.const(red, "axes"))
    if axes is None:
        trace.fail("max|x| pre-scale axes are not constant integers")
    if not math.isfinite(floor) or floor < 0:
        trace.fail(f"max|x| pre-scale floored at {floor:g}")
    return _Prescale(x=x, m=m, axes=axes, floor=floor)


def _match_rest(view, trace, reduce_op, base, exponent, prescale):
    if exponent != 2.0:
        trace.fail(f"power is {exponent:g}, not 2")
    squared = prescale.x if prescale else base
    rank = view.rank(squared)
    axes = reduction_axes(view, trace, reduce_op, view.rank(base))
    if prescale and (any(not -rank <= a < rank for a in prescale.axes) or sorted(a % rank for a in prescale.axes) != sorted(axes)):
        trace.fail("max|x| pre-scale reduces over other axes than the mean")
    scale_of = (lambda value: _eps_over_m2(view, trace, value, prescale.m)) if prescale else None
    stat = statistic_to_root(view, trace, reduce_op, base, axes, scale_of=scale_of)

    rescaled = False
    if prescale and is_square_root(view, stat.root):
        norm, rescaled = _divide_by_rescaled_root(view, trace, stat, prescale, base, axes)
    else:
        norm = normaliser(view, trace, stat, base, axes)
    scaled = norm.scaled
    if scaled is None or not same_tensor(view, squared if rescaled or not prescale else base, scaled):
        trace.fail("squares one tensor and scales another")
    x = unwrap_lossless(view, squared if prescale else scaled)
    above_x = set(cast_ancestry(view, x))
    trace.take(*casts_up_to(view, squared, above_x), *casts_up_to(view, scaled, above_x))
    _check_not_mean_centred(view, trace, x)
    dtype = view.dtype(x)
    if dtype not in FLOATS or not view.is_float_tensor(x):
        trace.fail(f"unsupported dtype {dtype_name(dtype)}")
    if view.rank(x) != rank:
        trace.fail(f"x has rank {view.rank(x)}, the squared tensor rank {rank}")
    output_op, gamma, _ = affine(view, trace, norm.op, dtype, gamma=norm.gamma)
    check_output(view, trace, x, axes, norm.op, output_op)
    facts = {"eps": stat.offset, "mean_scale": stat.scale, "max_scaled": prescale is not None,
             "floor": prescale.floor if prescale else 0.0, "eps_m2": stat.offset_m2}
    return Match(
        x=x,
        axes=axes,
        output=view.output(output_op),
        output_op=output_op,
        ops=trace.op_names(),
        dtype=dtype,
        operands={"gamma": gamma},
        params={"epsilon": stat.offset + stat.offset_m2},
        facts=facts,
        note=_prescale_note(prescale, stat, rescaled, dtype),
    )


def _eps_over_m2(view, trace, value, m):
    """eps / m^2 added under the root of a max-scaled chain (coremltools' fix of its lowering, apple/coremltools
    PR 2822): real_div(eps, mul(m, m) | square(m) | pow(m, 2)). Returns eps, or None."""
    div = producer_through_casts(view, value)
    if div is None or view.op_type(div) != "real_div":
        return None
    eps = scalar_const(view, div, "x")
    sq = producer_through_casts(view, view.arg(div, "y"))
    if eps is None or sq is None:
        return None
    kind = view.op_type(sq)
    if kind == "mul":
        ok = same_tensor(view, view.arg(sq, "x") or "", m) and same_tensor(view, view.arg(sq, "y") or "", m)
    elif kind in ("square", "pow"):
        ok = same_tensor(view, view.arg(sq, "x") or "", m) and (kind == "square" or scalar_const(view, sq, "y") == 2.0)
    else:
        ok = False
    if not ok:
        return None
    trace.take(sq, div)
    return eps


def _divide_by_rescaled_root(view, trace, stat, prescale, base, axes):
    """Max-scaled form with sqrt: mul(sqrt, m) (either order) then real_div(x, .) - coremltools' lowering; or,
    without the rescale, the plain normaliser of the scaled tensor. Returns (Normalised, rescaled)."""
    s = view.output(stat.root)
    step = follow(view, s, ("mul",), accept=lambda st: same_tensor(view, view.arg(st.op, other_param(st.op, st.param)) or "", prescale.m))
    if step is None or not stat.restored:
        return normaliser(view, trace, stat, base, axes, label="max|x| pre-scaled root"), False
    trace.take(*step.casts, step.op)
    rms = view.output(step.op)
    step = follow(view, rms, ("real_div",), accept=lambda st: st.param == "y")
    if step is None:
        trace.fail(f"rescaled root feeds {consumer_types(view, rms)}, not real_div(x, .)")
    trace.take(*step.casts, step.op)
    return Normalised(step.op, view.arg(step.op, "x")), True


def _prescale_note(prescale, stat, rescaled, dtype):
    """What the rewrite changes for a max-scaled chain: an eps the chain multiplied by m^2 is made true. A chain
    that adds eps / m^2 was exact already: no note."""
    if prescale is None or stat.offset == 0:
        return None
    if rescaled and not prescale.floor:
        who = "coremltools' max-scaled torch.nn.RMSNorm lowering"
    else:
        who = "max|x| pre-scaled chain" + ("" if rescaled else " without a rescale by max|x| (as executorch's Core ML llama norm)")
    m = f"max(max|x|, {prescale.floor:g})" if prescale.floor else "max|x|"
    # an all-zero row divides 0 by sqrt(eps) * floor: 0/0 without a floor, or where that product underflows fp16
    underflows = dtype == FLOAT16 and math.sqrt(stat.offset) * prescale.floor < 2.0**-25
    nan = " and gave NaN on an all-zero row" if not prescale.floor or underflows else ""
    return f"{who}: it computed x / sqrt(mean(x^2) + eps * {m}^2){nan}; rewritten with the true eps"


def _check_not_mean_centred(view, trace, x):
    """x = sub(y, mean(y)) makes the chain a LayerNorm: the layer_norm rule's, not this one's."""
    if centred(view, x) is not None:
        trace.recognise("LayerNorm", "input is mean-centred (x - mean(x)), not an RMSNorm")


# -- forms recognised and left alone -----------------------------------------------------------------------------
L2_WALK = ("maximum", "clip", "mul", "real_div", "inverse")


def _l2_form(view, anchor):
    """x / max(||x||_2, c) [* sqrt(D)] [* gamma]: RMSNorm written with one fused L2 reduction (ANEForge,
    executorch's RMSNormCoreML, OpenELM's stable norm). Already overflow-safe on the Neural Engine: recognised,
    left alone. Anything else built on reduce_l2_norm is not this pattern."""
    v = view.arg(anchor, "x")
    if v is None:
        return NOT_THIS_PATTERN

    def body(trace):
        trace.take(anchor)
        axes = int_axes(view.const(anchor, "axes"))
        rank = view.rank(v)
        dims = [view.dim(v, a % rank) for a in axes] if axes and all(-rank <= a < rank for a in axes) else [None]
        d = None if None in dims else math.prod(dims)
        floor, value = None, view.output(anchor)
        for _ in range(len(L2_WALK) * 2):
            step = follow(view, value, L2_WALK)
            if step is None:
                return None
            op, kind = step.op, view.op_type(step.op)
            other = other_param(op, step.param)
            if kind == "maximum":
                floor = scalar_const(view, op, other)
            elif kind == "clip":
                floor = scalar_const(view, op, "alpha")
            elif kind == "mul" and scalar_const(view, op, other) is not None:
                pass  # the sqrt(D) factor (executorch: 1/sqrt(D) on the norm)
            elif kind in ("real_div", "mul", "inverse"):
                numerator = view.arg(op, "x") if kind == "real_div" else view.arg(op, other)
                if kind == "real_div" and step.param != "y":
                    return None
                trace.take(*step.casts, op)
                if kind == "inverse":
                    value = view.output(op)
                    continue
                if numerator is None or not _l2_numerator(view, numerator, v):
                    return None
                break
            trace.take(*step.casts, op)
            value = view.output(op)
        else:
            return None
        if d is None or floor is None:
            return None
        trace.recognise(L2_KIND, (
            f"already stable on the Neural Engine (one fused reduce_l2_norm, no fp16 x^2); eps enters as a floor on "
            f"the norm, max(||v||, {floor:g}) over N = {d} values, not added under the root"
        ))

    return attempt(view, body)


def _l2_numerator(view, numerator, v):
    """Whether `numerator` is the tensor whose norm was taken: v itself, v times a constant (executorch's
    x * sqrt(D)), or the x that v pre-scales (OpenELM's v = x / max|x|)."""
    if same_tensor(view, numerator, v):
        return True
    op = producer_through_casts(view, numerator)
    if op is not None and view.op_type(op) == "mul":
        for param in ("x", "y"):
            if scalar_const(view, op, other_param(op, param)) is not None and same_tensor(view, view.arg(op, param) or "", v):
                return True
    div = producer_through_casts(view, v)
    return div is not None and view.op_type(div) == "real_div" and same_tensor(view, view.arg(div, "x") or "", numerator)


def _trick_form(view, anchor):
    """layer_norm(concat([x, -x])) read back as its first half: the trick itself (ANEMLL, CoreML-LLM, a model
    mlopt already optimized)."""
    concat = producer_through_casts(view, view.arg(anchor, "x"))
    if concat is None or view.op_type(concat) != "concat" or not view.has_input(concat, "values"):
        return NOT_THIS_PATTERN
    values = view.args(concat, "values")
    if not values or len(values) != 2:
        return NOT_THIS_PATTERN
    neg = producer_through_casts(view, values[1])
    if neg is None or view.op_type(neg) != "mul":
        return NOT_THIS_PATTERN
    for param in ("x", "y"):
        if scalar_const(view, neg, other_param(neg, param)) == -1.0 and same_tensor(view, view.arg(neg, param) or "", values[0]):
            break
    else:
        return NOT_THIS_PATTERN
    rank = view.rank(view.output(concat))
    axis, axes = scalar_const(view, concat, "axis"), int_axes(view.const(anchor, "axes"))
    if axis is None or not axes or int(axis) % rank not in {a % rank for a in axes}:
        return NOT_THIS_PATTERN  # [x, -x] along an axis layer_norm does not normalise: not the trick

    def body(trace):
        trace.take(neg, concat, anchor)
        half = follow(view, view.output(anchor), ("slice_by_index", "split"))
        if half is not None:
            trace.take(*half.casts, half.op)
        trace.recognise(TRICK_KIND, "already rewritten: layer_norm(concat([x, -x])) read back as its first half")

    return attempt(view, body)
