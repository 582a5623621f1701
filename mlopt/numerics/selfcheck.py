"""The self-check `optimize` runs on every rewrite before keeping it.

Each chain is evaluated three ways on inputs of several magnitudes, small (1e-2), typical (1) and large enough to
overflow x^2 in fp16 (300): the original chain in float64 (its mathematical meaning, the reference), the original
chain in its declared dtypes, and the replacement in its declared dtypes. The replacement must agree with the
reference within its dtype's tolerance, or the rewrite is rolled back. The original's own error is reported
beside it: at large magnitudes an fp16 chain overflows and the rewrite is the one that is right.

Only the chain is evaluated: the input fed is the tensor the chain reads (above its casts), and the evaluator
computes nothing else of the model.
"""

from dataclasses import dataclass

import numpy as np

from ..graph.dtypes import NUMPY
from ..patterns.walk import cast_ancestry
from .compare import compare, tolerance_for
from .interpreter import Evaluator

MAGNITUDES = (1e-2, 1.0, 300.0)
UNKNOWN_DIM = 2


@dataclass
class CheckResult:
    passed: bool
    error: float  # worst relative error of the rewrite against the float64 reference
    original_error: float  # the original chain's worst relative error, for comparison
    magnitude: float  # the input magnitude of the worst rewrite error


def self_check(view, blobs, match, new_ops, seed=0):
    rng = np.random.default_rng(seed)
    source = cast_ancestry(view, match.x)[-1]
    shape = [d if d is not None else UNKNOWN_DIM for d in _dims(view, source)]
    dtype = NUMPY[view.dtype(source)]
    rtol, atol = tolerance_for(NUMPY[match.dtype])
    overlay = {out.name: op for op in new_ops for out in op.outputs}
    reference = Evaluator(view, blobs, float_dtype=np.float64)
    original = Evaluator(view, blobs)
    rewritten = Evaluator(view, blobs, overlay=overlay)
    worst = CheckResult(True, 0.0, 0.0, MAGNITUDES[0])
    for magnitude in MAGNITUDES:
        feeds = {source: (rng.standard_normal(shape) * magnitude).astype(dtype)}
        ref = reference.evaluate([match.output], feeds)[match.output]
        new = compare(rewritten.evaluate([match.output], feeds)[match.output], ref, rtol=rtol, atol=atol)
        old = compare(original.evaluate([match.output], feeds)[match.output], ref, rtol=rtol, atol=atol)
        error = new.max_rel if new.mismatched_nonfinite == 0 else float("inf")
        original_error = old.max_rel if old.mismatched_nonfinite == 0 else float("inf")
        worst.original_error = max(worst.original_error, original_error)
        if error >= worst.error:
            worst.error, worst.magnitude = error, magnitude
        worst.passed = worst.passed and new.passed
    return worst


def _dims(view, value):
    return [view.dim(value, i) for i in range(view.rank(value))]
