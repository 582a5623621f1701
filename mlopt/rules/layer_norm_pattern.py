"""The decomposed LayerNorm pattern: `(x - mean(x)) / sqrt(var(x) + eps) [* gamma] [+ beta]` as converters leave it.

Target pattern (each arrow may cross `cast` ops; means may be reduce_sum * 1/N, broadcast back by
reshape/expand_dims/tile):

    mean = reduce_mean(x, axes)
    d    = sub(x, mean)
    var  = reduce_mean(square(d) | mul(d, d) | pow(d, 2), axes)          variance of the centred tensor
         | reduce_mean(x^2, axes) - square(mean)                         E[x^2] - E[x]^2
      -> [add(eps)] -> rsqrt(epsilon) | pow(-0.5) | sqrt | pow(0.5)
      -> mul(d', .) | real_div(d', sqrt) | mul(d', real_div(1, sqrt))    d' = x - mean(x): the same sub, or another
       | mul(x, inv) + (beta - mean * inv)                               the mean subtracted after scaling
      -> [mul(gamma)] [add(beta)], constant per call, -> [cast back to x's dtype]

Conditions: one tensor centred, squared and normalised; the mean and the variance over the same axes; a true
mean (1/N of a sum, no unbiased N/(N-1)); eps inside the root. Matching is anchored at the variance's reduction,
like RMSNorm's at its mean square; a chain whose numerator is not centred (x / std(x)) is left alone with the
reason. The mean may be subtracted after scaling x (`x * inv + (beta - mean * inv)`, inv the inverse root, gamma
folded into it or not: TensorFlow's BERT, TensorFlow-Addons, Keras 3, coremltools' pattern 1), with the same
conditions. A per-channel affine that comes after as `batch_norm`, or after a reshape back (grouped norms), stays as
it is, after the new layer_norm.
"""

from ..graph.dtypes import FLOATS, name as dtype_name
from ..patterns.norm import (
    REDUCTIONS,
    affine,
    broadcasts_as_kept,
    centred,
    check_output,
    mean_of,
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
    constant_float,
    follow,
    other_param,
    producer_through_casts,
    same_tensor,
    scalar_const,
    unwrap_lossless,
)
from .base import Match

NOT_CENTRED = "normalises a tensor that is not mean-centred (x / std(x)): not a LayerNorm"


def match_layer_norm(view, anchor):
    """The LayerNorm pattern anchored at a variance's reduction: a status (patterns/status.py)."""
    square = square_of(view, anchor) if view.op_type(anchor) in REDUCTIONS else None
    if square is None:
        return NOT_THIS_PATTERN
    square_op, base, exponent = square
    centre = centred(view, base)
    moments = None if centre is not None else _moments_mean(view, anchor, base)
    if centre is None and moments is None:
        return _off_scale_centring(view, anchor, square_op, base)

    def body(trace):
        if square_op is not None:
            trace.take(square_op)
            trace.take(*casts_between(view, view.arg(anchor, "x"), view.output(square_op)))
        trace.take(anchor)
        if exponent != 2.0:
            trace.fail(f"power is {exponent:g}, not 2")
        rank = view.rank(base)
        axes = tuple(sorted(reduction_axes(view, trace, anchor, rank, what="variance")))
        if centre is not None:
            trace.take(*casts_up_to(view, base, {view.output(centre.sub)}), centre.sub, *centre.mean.ops)
            mean, source, subtract = centre.mean, centre.x, None
        else:
            mean, source = moments, base
            subtract = lambda value: _square_mean(view, value, base) is not None  # noqa: E731
        if axes != mean.axes:
            trace.fail(f"mean over axes {list(mean.axes)}, variance over {list(axes)}: not one LayerNorm")
        if not mean.exact:
            trace.take(*mean.ops)
            trace.fail(mean.off_scale_reason(view))
        stat = statistic_to_root(view, trace, anchor, base, axes, label="variance", norm="LayerNorm", subtract=subtract)
        if subtract is not None:  # the E[x]^2 the walk subtracted: its ops are the chain's
            mean_squared, squaring = _square_mean(view, stat.subtracted, base)
            trace.take(*casts_up_to(view, stat.subtracted, set()), squaring, *mean_squared.ops)
            if not mean_squared.exact:
                trace.fail(mean_squared.off_scale_reason(view))
        plain = centre.x if centre is not None else source  # the tensor before centring
        norm = normaliser(view, trace, stat, base if centre else source, axes, prefer=(plain,))
        numerator = centred(view, norm.scaled) if norm.scaled is not None else None
        last, beta = norm.op, None
        if numerator is None and norm.scaled is not None and same_tensor(view, norm.scaled, plain):
            missing = (NOT_CENTRED if centre is not None else
                       "normalises x itself, not x - mean(x), and subtracts no mean after: not a LayerNorm")
            last, beta = _mean_subtracted_after(view, trace, norm, mean, missing)
            centred_x, centring = norm.scaled, mean
        elif numerator is None:
            trace.fail(NOT_CENTRED)
        else:
            if not same_tensor(view, numerator.x, source) or numerator.mean.axes != mean.axes:
                trace.fail("centres one tensor and normalises another")
            trace.take(*casts_up_to(view, norm.scaled, {view.output(numerator.sub)}), numerator.sub, *numerator.mean.ops)
            centred_x, centring = numerator.x, numerator.mean
        x = unwrap_lossless(view, centred_x)
        above_x = set(cast_ancestry(view, x))
        for value in (source, centred_x, mean.x, centring.x):
            trace.take(*casts_up_to(view, value, above_x))
        dtype = view.dtype(x)
        if dtype not in FLOATS or not view.is_float_tensor(x):
            trace.fail(f"unsupported dtype {dtype_name(dtype)}")
        if view.rank(x) != rank:
            trace.fail(f"x has rank {view.rank(x)}, the centred tensor rank {rank}")
        output_op, gamma, beta = affine(view, trace, last, dtype, with_beta=True, gamma=norm.gamma, beta=beta)
        check_output(view, trace, x, axes, norm.op, output_op)
        return Match(
            x=x,
            axes=axes,
            output=view.output(output_op),
            output_op=output_op,
            ops=trace.op_names(),
            dtype=dtype,
            operands={"gamma": gamma, "beta": beta},
            params={"epsilon": stat.offset},
            facts={"var_scale": stat.scale, "mean_scale": centring.scale, "var_mean_scale": mean.scale,
                   "moments": centre is None},
        )

    return attempt(view, body)


def _off_scale_centring(view, anchor, square_op, base):
    """x - k * sum(x) squared and reduced, k not 1/N (or a mean scaled off 1): the variance of a tensor centred
    by no mean. Left alone with the scale it has, or NOT_THIS_PATTERN if `base` is no such subtraction."""
    centre = centred(view, base, exact=False)
    if centre is None:
        return NOT_THIS_PATTERN

    def body(trace):
        trace.take(*[op for op in (square_op, anchor) if op is not None], centre.sub, *centre.mean.ops)
        trace.fail(centre.mean.off_scale_reason(view))

    return attempt(view, body)


def _mean_subtracted_after(view, trace, norm, mean, missing):
    """The mean subtracted after x is scaled: x * inv + (beta - mean * inv) (TensorFlow's BERT, coremltools'
    pattern 1), x * inv + mean * inv * -1 (TensorFlow-Addons), x * inv + (mul(mean, -1) * inv + beta) (Keras 3's
    batch_normalization), x * inv - mean * inv; inv the inverse root (times gamma). Returns (the final op, beta)."""
    use = follow(view, view.output(norm.op), ("add", "sub"), accept=lambda st: view.op_type(st.op) == "add" or st.param == "x")
    if use is None:
        trace.fail(missing)
    trace.take(*use.casts)
    final, rest = use.op, view.arg(use.op, other_param(use.op, use.param))
    sign = -1.0 if view.op_type(final) == "add" else 1.0  # the term `rest` must be sign * mean * inv
    op, beta = producer_through_casts(view, rest), None
    if op is not None and sign < 0 and view.op_type(op) in ("add", "sub"):
        for param in ("x", "y") if view.op_type(op) == "add" else ("x",):
            other = view.arg(op, other_param(op, param))
            if constant_float(view, view.arg(op, param)) and other is not None:
                trace.take(op, label="add(beta)")
                beta, rest, sign = view.arg(op, param), other, (-1.0 if view.op_type(op) == "add" else 1.0)
                break
    term = producer_through_casts(view, rest)
    trace.take(*casts_up_to(view, rest, set()))
    if term is not None and view.op_type(term) == "mul":  # mean * inv * -1: the sign after the product
        for param in ("x", "y"):
            if scalar_const(view, term, other_param(term, param)) == -1.0 and view.arg(term, param) is not None:
                trace.take(term)
                rest, sign = view.arg(term, param), -sign
                term = producer_through_casts(view, rest)
                trace.take(*casts_up_to(view, rest, set()))
                break
    if term is None or view.op_type(term) != "mul":  # no product added: x is normalised uncentred (x / std(x))
        trace.fail(missing)
    for param in [p for p in ("x", "y") if same_tensor(view, view.arg(term, p) or "", norm.inverse)]:
        if _is_mean(view, trace, view.arg(term, other_param(term, param)), mean, sign):
            trace.take(term, final)
            return final, beta
    trace.fail("adds something other than -mean(x) * inverse root after scaling x: not a LayerNorm")


def _is_mean(view, trace, value, mean, sign):
    """`value` is sign * the mean (the same reduction): mul(mean, -1) for sign -1, the mean itself for +1."""
    op = producer_through_casts(view, value)
    if sign < 0:
        if op is None or view.op_type(op) != "mul":
            return False
        for param in ("x", "y"):
            if scalar_const(view, op, other_param(op, param)) == -1.0:
                found = mean_of(view, view.arg(op, param))
                if found is not None and found.reduction is mean.reduction and broadcasts_as_kept(
                        view, view.arg(op, param), mean.x, mean.axes):
                    trace.take(*casts_up_to(view, value, set()), op, *found.ops)
                    return True
        return False
    found = mean_of(view, value)
    if found is None or found.reduction is not mean.reduction or not broadcasts_as_kept(view, value, mean.x, mean.axes):
        return False
    trace.take(*found.ops)
    return True


def _moments_mean(view, anchor, base):
    """E[x^2] - E[x]^2: the Mean whose square a sub after the anchor (a mean of squares of `base`, not centred)
    subtracts, or None."""
    for value in _downstream(view, view.output(anchor)):
        for use in view.consumers(value):
            if use.op is not None and view.op_type(use.op) == "sub" and use.param == "x":
                found = _square_mean(view, view.arg(use.op, "y"), base)
                if found is not None:
                    return found[0]
    return None


def _square_mean(view, value, base):
    """(Mean, square op) if `value` is square(mean(base)) | mul(m, m) | pow(m, 2)."""
    op = producer_through_casts(view, value)
    if op is None:
        return None
    kind = view.op_type(op)
    if kind == "mul" and same_tensor(view, view.arg(op, "x") or "", view.arg(op, "y") or "-"):
        m = view.arg(op, "x")
    elif kind == "square" or (kind == "pow" and scalar_const(view, op, "y") == 2.0):
        m = view.arg(op, "x")
    else:
        return None
    mean = mean_of(view, m, exact=False)  # an off scale is the matcher's reason to give
    if mean is None or not same_tensor(view, mean.x, base):
        return None
    return mean, op


def _downstream(view, value, limit=8):
    """`value` and the values a few single-input scale/shape/cast ops make of it (where a sub may follow)."""
    out = [value]
    for _ in range(limit):
        uses = view.consumers(out[-1])
        nxt = [u.op for u in uses if u.op is not None and view.op_type(u.op) in ("mul", "real_div", "cast", "reshape", "expand_dims")]
        if len(nxt) != 1:
            break
        out.append(view.output(nxt[0]))
    return out
