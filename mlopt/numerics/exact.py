"""Float64 evaluation of a whole program: the yardstick `verify` judges two models against (docs/verify.md), and
the helpers that measure a run against it. Any analysis that asks "how far is this fp16 run from the
mathematics the program states" uses these.

`run_float64` runs a function with every float value in float64, casts included (a float cast changes nothing,
so an fp16 program and its fp32 islands compute the same exact chain): what the program would compute with no
rounding to speak of - except in a softmax row an attention mask hides entirely, held to the uniform row the
float32 source model gives (masked_rows.py: float64 alone would keep the scores under the sentinel). It is the interpreter's `Evaluator(float_dtype=np.float64).run`, with its guarantees: the
whole function in program order, weights read at first use and values dropped after their last use, the same
memory budget (interpreter.MAX_LIVE_BYTES) as any run: a float64 value takes 4x the bytes of an fp16 one, so
a program near the budget in fp16 can exceed it here, and `InterpreterError` says so (callers fall back; verify
reports that it judged without float64).

`error_against(values, truth)` is the error measure: max |values - truth| / max |truth| over the elements both
hold finite (the relative error compare.py prints, meaningful where truth is near 0), or inf when `values` is
not finite where `truth` is (or the reverse): an fp16 overflow is the worst error, not a missing one.

`first_departure(view, blobs, feeds)` names the first op, in program order, whose output is not finite where
the float64 run's is: where an fp16 run overflows first.
"""

import numpy as np

from ..graph.spec_graph import op_name
from .compare import compare
from .interpreter import Evaluator, InterpreterError
from .masked_rows import FullRows


def run_float64(view, blobs, feeds, targets):
    """{target: float64 value} for a float64 run of the whole function (InterpreterError if it cannot run)."""
    full_rows = FullRows(view)
    full_rows.see(feeds, list(feeds))

    def after_op(op, env):
        if op.type == "softmax":
            full_rows.hold(op, env)
        full_rows.see(env, [o.name for o in op.outputs])

    return Evaluator(view, blobs, float_dtype=np.float64).run(feeds, list(targets), after_op=after_op)


def error_against(values, truth):
    """Relative error of `values` against `truth` (float64): max abs difference over max |truth|; inf where one
    is non-finite and the other is not."""
    difference = compare(np.asarray(values, np.float64), np.asarray(truth, np.float64))
    return float("inf") if difference.mismatched_nonfinite else difference.max_rel


def departs(values, truth):
    """True if `values` is non-finite somewhere `truth` is finite (an overflow the mathematics does not have)."""
    with np.errstate(all="ignore"):
        return bool(np.any(~np.isfinite(np.asarray(values, np.float64)) & np.isfinite(np.asarray(truth, np.float64))))


def first_departure(view, blobs, feeds):
    """Name of the first main-block op (program order) whose output holds inf/NaN where the float64 run's does
    not; None if none does, or if either run cannot hold every op's output within the interpreter's budget."""
    targets = [out.name for op in view.main.operations if op.type != "const" for out in op.outputs]
    try:
        plain = Evaluator(view, blobs).run(feeds, targets)
        exact = run_float64(view, blobs, feeds, targets)
    except InterpreterError:
        return None
    for op in view.main.operations:
        for out in op.outputs:
            value = plain.get(out.name)
            if isinstance(value, np.ndarray) and value.dtype.kind == "f" and departs(value, exact[out.name]):
                return op_name(op)
    return None
