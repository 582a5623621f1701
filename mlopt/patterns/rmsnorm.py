"""The RMSNorm pattern: `x * rsqrt(mean(x^2, axis) + eps) [* gamma]` in every spelling converters emit.

Target pattern (each arrow may cross `cast` ops):

    square(x) | pow(x, 2) | mul(x, x)
      -> reduce_mean(axes=[a], keep_dims=True)
      -> [add(eps) (either side)]
      -> rsqrt(epsilon) | pow(-0.5) | sqrt
      -> mul(x, .) (either side)   for rsqrt/pow, or for real_div(1, sqrt)
         real_div(x, .)            for sqrt
      -> [mul(gamma) (either side), gamma a constant]
      -> [cast back to x's dtype]

Conditions: the squared and the scaled tensor are one tensor (up to float casts); the power is exactly 2 and
the root exactly -0.5 or a square root with nothing added after it; one constant axis; the input is not
mean-centred (that is a LayerNorm). Matching is anchored at every `reduce_mean`/`reduce_sum` of a squared value; a
candidate that fails a condition is reported as a near-miss with the reason.
"""

from dataclasses import dataclass


from ..graph.dtypes import FLOATS, NUMPY, name as dtype_name
from ..graph.view import op_name
from .trace import NoMatch, Trace
from .walk import cast_ancestry, casts_between, follow, is_widening, other_param, sole_consumer

RSQRT_DEFAULT_EPSILON = 1e-12  # MIL's default for rsqrt(epsilon)


@dataclass
class RMSNormMatch:
    """What the rewrite needs to know about one matched chain."""

    x: str  # the normalised tensor, outside any cast wrapper
    axis: int  # non-negative
    epsilon: float  # the chain's total: add(eps) + rsqrt's epsilon, as stored
    gamma: str  # value multiplied in after normalising, or None
    output: str  # the value the chain defines; the rewrite keeps its name and type
    output_op: object  # the Operation producing `output`
    ops: tuple  # names of the ops the chain covers (removed if nothing else uses them)
    dtype: int  # compute dtype: x's dtype


@dataclass
class Candidate:
    """An RMSNorm-like chain: a match, or a near-miss with the reason it was left alone."""

    function: str
    anchor: str  # the reduce op's name
    form: str  # e.g. "pow -> reduce_mean -> add -> rsqrt -> mul -> mul(gamma)"
    match: RMSNormMatch = None
    reason: str = None


def find_rms_norms(view):
    """Every RMSNorm-like candidate in the function, in program order."""
    found = []
    for op in list(view.ops()):
        if op.type in ("reduce_mean", "reduce_sum"):
            candidate = match_at(view, op)
            if candidate is not None:
                found.append(candidate)
    return found


def match_at(view, reduce_op):
    """Try the pattern anchored at `reduce_op`. None if its input is not a square at all (a plain mean)."""
    square = _square_of(view, reduce_op)
    if square is None:
        return None
    square_op, base, exponent = square
    trace = Trace()
    try:
        trace.take(*casts_between(view, view.arg(reduce_op, "x"), square_op.outputs[0].name))
        trace.take(square_op)
        trace.take(reduce_op)
        match = _match_rest(view, trace, reduce_op, square_op, base, exponent)
        return Candidate(view.name, op_name(reduce_op), trace.form, match=match)
    except NoMatch as e:
        return Candidate(view.name, op_name(reduce_op), trace.form, reason=e.reason)


def _square_of(view, reduce_op):
    """(square op, squared value, exponent) if the reduced value is a power of something, else None."""
    source = view.arg(reduce_op, "x")
    if source is None:
        return None
    op = view.producer.get(cast_ancestry(view, source)[-1])
    if op is None:
        return None
    if op.type == "square":
        return op, view.arg(op, "x"), 2.0
    if op.type == "pow":
        y = view.const(op, "y")
        if y is None or y.size != 1 or view.arg(op, "x") is None:
            return None
        return op, view.arg(op, "x"), float(y.reshape(()))
    if op.type == "mul":
        a, b = view.arg(op, "x"), view.arg(op, "y")
        if a is not None and b is not None and _same_tensor(view, a, b):
            return op, a, 2.0
    return None


def _match_rest(view, trace, reduce_op, square_op, base, exponent):
    if exponent != 2.0:
        trace.fail(f"power is {exponent:g}, not 2")
    if reduce_op.type != "reduce_mean":
        trace.fail("reduce_sum, not reduce_mean: no 1/N scale")
    axes = view.const(reduce_op, "axes")
    if axes is None:
        trace.fail("reduction axes are not constant")
    if axes.size != 1:
        trace.fail(f"reduces over {axes.size} axes, not one")
    keep_dims = view.const(reduce_op, "keep_dims")
    if keep_dims is None or not bool(keep_dims.reshape(())):
        trace.fail("keep_dims is false")

    value = reduce_op.outputs[0].name
    eps_add = 0.0
    step = follow(view, value, ("add", "rsqrt", "sqrt", "pow"))
    if step is None:
        trace.fail(f"mean square feeds {_consumer_types(view, value)}, not add/rsqrt/sqrt/pow")
    if step.op.type == "add":
        eps = view.const(step.op, other_param(step.op, step.param))
        if eps is None or eps.size != 1:
            trace.fail("adds a non-constant to the mean square")
        eps_add = float(eps.reshape(()))
        trace.take(*step.casts, step.op)
        value = step.op.outputs[0].name
        step = follow(view, value, ("rsqrt", "sqrt", "pow", "add", "real_div", "mul"))
        if step is None or step.op.type not in ("rsqrt", "sqrt", "pow"):
            trace.fail(f"mean square + eps feeds {_consumer_types(view, value)}, not a square root")
    trace.take(*step.casts, step.op)
    root = step.op

    if root.type == "pow":
        y = view.const(root, "y")
        if y is None or y.size != 1 or float(y.reshape(())) != -0.5:
            trace.fail(f"root is pow({'?' if y is None else float(y.reshape(-1)[0]):g}), not pow(-0.5)")
    eps_root = 0.0
    if root.type == "rsqrt":
        eps = view.const(root, "epsilon")
        if eps is None:
            eps_root = float(NUMPY[view.dtype(view.arg(root, "x"))](RSQRT_DEFAULT_EPSILON))
        elif eps.size != 1:
            trace.fail("rsqrt epsilon is not a scalar")
        else:
            eps_root = float(eps.reshape(()))

    if root.type == "sqrt":
        norm_op, scaled = _divide_by_root(view, trace, root, base)
    else:
        norm_op, scaled = _scale_by_inverse(view, trace, root.outputs[0].name, base)

    if scaled is None or not _same_tensor(view, base, scaled):
        trace.fail("squares one tensor and scales another")
    x = _unwrap_lossless(view, scaled)
    above_x = set(cast_ancestry(view, x))
    trace.take(*_casts_up_to(view, base, above_x), *_casts_up_to(view, scaled, above_x))
    _check_not_mean_centred(view, trace, x)
    dtype = view.dtype(x)
    if dtype not in FLOATS:
        trace.fail(f"unsupported dtype {dtype_name(dtype)}")

    output_op, gamma = _gamma(view, trace, norm_op, dtype)
    axis = int(axes.reshape(-1)[0])
    rank = view.rank(x)
    if not -rank <= axis < rank:
        trace.fail(f"axis {axis} out of range for rank {rank}")
    axis %= rank
    if view.dim(x, axis) is None:
        trace.fail(f"normalised axis {axis} has unknown size")
    if len({id(view.block_of[id(op)]) for op in trace.ops}) != 1:
        trace.fail("chain spans several blocks")
    return RMSNormMatch(
        x=x,
        axis=axis,
        epsilon=eps_add + eps_root,
        gamma=gamma,
        output=output_op.outputs[0].name,
        output_op=output_op,
        ops=trace.op_names(),
        dtype=dtype,
    )


def _scale_by_inverse(view, trace, inv, base):
    """mul(x, inv) in either operand order; prefer the mul that scales the squared tensor if there are several."""
    step = follow(view, inv, ("mul",), accept=lambda st: _scales(view, st, base)) or follow(view, inv, ("mul",))
    if step is None:
        trace.fail(f"inverse root feeds {_consumer_types(view, inv)}, not mul")
    trace.take(*step.casts, step.op)
    return step.op, view.arg(step.op, other_param(step.op, step.param))


def _scales(view, step, base):
    other = view.arg(step.op, other_param(step.op, step.param))
    return other is not None and _same_tensor(view, base, other)


def _divide_by_root(view, trace, sqrt_op, base):
    """After `sqrt`: real_div(x, s) normalises directly; real_div(1, s) is an inverse root for a later mul."""
    s = sqrt_op.outputs[0].name
    step = follow(view, s, ("real_div",), accept=lambda st: st.param == "y" and (_scales(view, st, base) or _is_one(view, st.op)))
    step = step or follow(view, s, ("real_div",), accept=lambda st: st.param == "y")
    if step is None and follow(view, s, ("add", "inverse")) is not None:
        trace.fail("epsilon added outside the square root")
    if step is None:
        trace.fail(f"square root feeds {_consumer_types(view, s)}, not real_div(x, sqrt)")
    trace.take(*step.casts, step.op)
    numerator = view.const(step.op, "x")
    if numerator is None:
        return step.op, view.arg(step.op, "x")
    if numerator.size != 1 or float(numerator.reshape(())) != 1.0:
        trace.fail("divides a constant other than 1 by the square root")
    return _scale_by_inverse(view, trace, step.op.outputs[0].name, base)


def _is_one(view, div_op):
    numerator = view.const(div_op, "x")
    return numerator is not None and numerator.size == 1 and float(numerator.reshape(())) == 1.0


def _gamma(view, trace, norm_op, dtype):
    """Absorb a following `mul(gamma)` (gamma constant) and a cast back to x's dtype; return (output op, gamma)."""
    output_op, gamma = norm_op, None
    use = _sole_use_through_casts(view, norm_op.outputs[0].name)
    if use is not None and use.op.type == "mul" and use.param in ("x", "y"):
        mul, casts = use.op, use.casts
        weight = view.arg(mul, other_param(mul, use.param))
        if weight is not None and view.is_const(cast_ancestry(view, weight)[-1]):
            trace.take(*casts)
            trace.take(mul, label="mul(gamma)")
            output_op, gamma = mul, weight
    use = sole_consumer(view, output_op.outputs[0].name)
    if use is not None and use.op.type == "cast" and view.dtype(use.op.outputs[0].name) == dtype:
        trace.take(use.op)
        output_op = use.op
    return output_op, gamma


@dataclass
class _UseThroughCasts:
    op: object
    param: str
    casts: list


def _sole_use_through_casts(view, value):
    casts = []
    while True:
        use = sole_consumer(view, value)
        if use is None:
            return None
        if use.op.type != "cast":
            return _UseThroughCasts(use.op, use.param, casts)
        casts.append(use.op)
        value = use.op.outputs[0].name


def _same_tensor(view, a, b):
    """True if `a` and `b` are one tensor, possibly at two float precisions (float casts of a common value)."""
    up_a, up_b = cast_ancestry(view, a), cast_ancestry(view, b)
    common = next((v for v in up_a if v in up_b), None)
    if common is None:
        return False
    path = up_a[: up_a.index(common) + 1] + up_b[: up_b.index(common) + 1]
    return all(view.is_float_tensor(v) for v in path)


def _casts_up_to(view, value, stop):
    """The casts from `value` up to the first value in `stop` (casts wrapping x on the way into the chain)."""
    casts = []
    while value not in stop:
        op = view.producer.get(value)
        if op is None or op.type != "cast":
            return casts
        casts.append(op)
        value = view.arg(op, "x")
    return casts


def _unwrap_lossless(view, value):
    """`value`, or the narrower tensor it is a lossless widening of: `cast(x16, fp32)` gives `x16`.

    The scaled tensor, unwrapped like this, is the rewrite's input: a fp16 model with fp32 islands computes the
    whole norm in fp16, and a chain scaling a rounded copy (`cast(x32, fp16)`) keeps that copy's precision.
    """
    while True:
        op = view.producer.get(value)
        if op is None or op.type != "cast" or not is_widening(view, op):
            return value
        value = view.arg(op, "x")


def _check_not_mean_centred(view, trace, x):
    """x = sub(y, reduce_mean(y)) makes the chain a LayerNorm: a different op, not ours to rewrite."""
    for value in cast_ancestry(view, x):
        op = view.producer.get(value)
        if op is None or op.type != "sub":
            continue
        y, mean = view.arg(op, "x"), view.arg(op, "y")
        mean_op = view.producer.get(cast_ancestry(view, mean)[-1]) if mean else None
        if mean_op is not None and mean_op.type == "reduce_mean" and y is not None:
            if _same_tensor(view, view.arg(mean_op, "x"), y):
                trace.fail("input is mean-centred (x - mean(x)): a LayerNorm, not an RMSNorm")


def _consumer_types(view, value):
    types = sorted({u.op.type if u.op is not None else "a block output" for u in view.consumers(value)})
    return "/".join(types) or "nothing"
