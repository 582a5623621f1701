"""Scaling by the root: the op that normalises a tensor, and the affine (gamma, beta) after it.

    normaliser: mul(t, inverse root) | real_div(t, sqrt) | mul(t, real_div(1, sqrt)), through tile/reshape
                (sqrt: also pow(0.5)),
                a gamma possibly multiplied into the inverse root first (Keras, Flax)
    affine:     [mul(gamma)] [add(beta)], constant per call, casts between, [cast back]
"""

from dataclasses import dataclass

from ...graph.shapes import same_shape
from ..walk import constant_float, consumer_types, follow, other_param, same_tensor, scalar_const, sole_consumer
from .statistic import is_square_root, through_shape_ops


@dataclass
class Normalised:
    op: object  # the op scaling the tensor: mul(t, inverse) or real_div(t, sqrt)
    scaled: str  # the tensor it scales
    inverse: str = None  # the value t is multiplied with (the inverse root, times gamma if folded in)
    gamma: str = None  # a gamma multiplied into the inverse root before it scales t (Keras, Flax)


def normaliser(view, trace, stat, base, axes, label="square root", prefer=()):
    """The op that scales a tensor by the root. `base` is the tensor the scale is expected on (preferred where
    several consumers would do), and the tensor that was reduced; `prefer` are tensors preferred next (x itself,
    for a LayerNorm that subtracts the scaled mean after scaling x)."""
    root = stat.root
    s = through_shape_ops(view, trace, view.output(root), axes, like=base, restored=stat.restored)
    if not is_square_root(view, root):
        return scale_by_inverse(view, trace, s, base, prefer)
    step = follow(view, s, ("real_div",), accept=lambda st: st.param == "y" and (scales(view, st, base) or is_one(view, st.op)))
    for other in prefer:
        step = step or follow(view, s, ("real_div",), accept=lambda st: st.param == "y" and scales(view, st, other))
    step = step or follow(view, s, ("real_div",), accept=lambda st: st.param == "y")
    if step is None and follow(view, s, ("add",)) is not None:
        trace.fail("epsilon added outside the square root")
    if step is None and follow(view, s, ("inverse",)) is not None:
        trace.fail("square root inverted by `inverse`, which adds its own epsilon outside the root")
    if step is None:
        trace.fail(f"{label} feeds {consumer_types(view, s)}, not real_div(x, sqrt)")
    trace.take(*step.casts, step.op)
    if view.const(step.op, "x") is None:
        return Normalised(step.op, view.arg(step.op, "x"))
    if not is_one(view, step.op):
        trace.fail("divides a constant other than 1 by the square root")
    return scale_by_inverse(view, trace, view.output(step.op), base, prefer)


def scale_by_inverse(view, trace, inv, base, prefer=()):
    """mul(t, inv) in either operand order; prefer the mul that scales `base`, then one that scales a tensor of
    `prefer`, if there are several. A gamma may be multiplied into the inverse first (mul(inv, gamma), gamma
    constant per call), as Keras, Flax and TensorFlow's BERT write it."""
    step = _preferred(view, inv, base, prefer)
    if step is None:
        folded = follow(view, inv, ("mul",), accept=lambda st: constant_float(view, view.arg(st.op, other_param(st.op, st.param))))
        if folded is not None:
            scaled_inv = view.output(folded.op)
            step = _preferred(view, scaled_inv, base, prefer) or follow(
                view, scaled_inv, ("mul",), accept=lambda st: not constant_float(view, view.arg(st.op, other_param(st.op, st.param))))
            if step is not None:
                trace.take(*folded.casts)
                trace.take(folded.op, label="mul(gamma)")
                trace.take(*step.casts, step.op)
                gamma = view.arg(folded.op, other_param(folded.op, folded.param))
                return Normalised(step.op, view.arg(step.op, other_param(step.op, step.param)), step.via, gamma)
    step = step or follow(view, inv, ("mul",))
    if step is None:
        trace.fail(f"inverse root feeds {consumer_types(view, inv)}, not mul")
    trace.take(*step.casts, step.op)
    return Normalised(step.op, view.arg(step.op, other_param(step.op, step.param)), step.via)


def _preferred(view, inv, base, prefer):
    """The mul that scales `base` by `inv`, else the first that scales a tensor of `prefer`, or None."""
    for t in (base, *prefer):
        step = follow(view, inv, ("mul",), accept=lambda st: scales(view, st, t))  # noqa: B023 (called at once)
        if step is not None:
            return step
    return None


def scales(view, step, base):
    other = view.arg(step.op, other_param(step.op, step.param))
    return other is not None and same_tensor(view, base, other)


def is_one(view, div_op):
    return scalar_const(view, div_op, "x") == 1.0


def affine(view, trace, norm_op, dtype, with_beta=False, gamma=None, beta=None):
    """Absorb a following `mul(gamma)` and (with_beta) `add(beta)`, each constant per call and either operand
    order, casts between included, and a final cast back to x's dtype. `gamma`/`beta` already found (folded
    into the inverse root, ...) are not looked for again. Returns (output op, gamma, beta)."""
    output_op, found = norm_op, {"gamma": gamma, "beta": beta}
    for name, kind, label in (("gamma", "mul", "mul(gamma)"), ("beta", "add", "add(beta)")):
        if name == "beta" and not with_beta:
            break
        if found[name] is not None:
            continue
        casts, use = [], sole_consumer(view, view.output(output_op))
        while use is not None and view.op_type(use.op) == "cast" and all(use.op is not c for c in casts):  # a cycle ends it
            casts.append(use.op)
            use = sole_consumer(view, view.output(use.op))
        if use is not None and view.op_type(use.op) == kind and use.param in ("x", "y"):
            weight = view.arg(use.op, other_param(use.op, use.param))
            if constant_float(view, weight):
                trace.take(*casts)
                trace.take(use.op, label=label)
                output_op, found[name] = use.op, weight
    use = sole_consumer(view, view.output(output_op))
    if use is not None and view.op_type(use.op) == "cast" and view.dtype(view.output(use.op)) == dtype:
        trace.take(use.op)
        output_op = use.op
    return output_op, found["gamma"], found["beta"]


def check_output(view, trace, x, axes, norm_op, output_op):
    """Conditions every norm's rewrite needs: the normalised tensor has x's shape (nothing on the way broadcast
    it to another), a float output, a static first normalised size, no empty axis, one block."""
    if not same_shape(view, view.output(norm_op), x):
        trace.fail("the normalised tensor has another shape than the tensor it normalises")
    if not view.is_float_tensor(view.output(output_op)):
        trace.fail(f"the chain's output '{view.output(output_op)}' is not a float tensor")
    if view.dim(x, axes[0]) is None:
        trace.fail(f"normalised axis {axes[0]} has unknown size")
    if any(view.dim(x, a) == 0 for a in axes):
        trace.fail("a normalised axis has size 0: nothing to normalise")
    if len({id(view.block(op)) for op in trace.ops}) != 1:
        trace.fail("chain spans several blocks")
