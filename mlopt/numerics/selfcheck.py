"""The self-check `optimize` runs on every rewrite before keeping it.

Each chain is evaluated on inputs of several magnitudes - small (1e-2), typical (1) and large enough to overflow
x^2 in fp16 (300) - each batch holding one all-zero row. Two things must hold:

1. The match is read right: the original chain evaluated in float64 equals, to 1e-6, the formula the matcher
   read from it (axes, epsilon, gamma, and for coremltools' max-scaled lowering its max|x| pre-scale). A chain
   mlopt misunderstood is left alone, whatever the rewrite would do.
2. The rewrite is right: the replacement, evaluated in its declared dtypes, equals RMSNorm(x; axes, eps) * gamma
   computed in float64 within its dtype's tolerance. For ordinary chains that formula is also what the chain
   computes; for the max-scaled lowering it is what the model author wrote (the lowering inflated eps).

The original chain's own error against the same formula is reported beside the rewrite's: at large magnitudes an
fp16 chain overflows. Only the chain is evaluated: the input fed is the tensor the chain reads (above its
casts), and nothing else of the model is computed. Rows are independent, so the input has at most ROWS entries
along every axis that is not normalised (unless gamma varies along one): a (1, 512, 2048) activation is checked
as (1, 4, 2048), and the check costs the same for any sequence length.
"""

from dataclasses import dataclass

import numpy as np

from ..graph.dtypes import NUMPY
from ..patterns.walk import cast_ancestry
from .compare import compare, tolerance_for
from .interpreter import Evaluator

MAGNITUDES = (1e-2, 1.0, 300.0)
UNKNOWN_DIM = 2
ROWS = 4  # entries kept along each axis that is not normalised
READ_RTOL = 1e-6  # float64 chain vs the formula read from it: only rounding of float64 differs


@dataclass
class CheckResult:
    passed: bool
    error: float = 0.0  # worst relative error of the rewrite against float64 RMSNorm
    original_error: float = 0.0  # the original chain's worst relative error against it
    magnitude: float = MAGNITUDES[0]  # the input magnitude of the worst rewrite error
    reason: str = None  # why the check failed


def rms_norm_reference(x, axes, eps, gamma=None, max_scaled=False, mean_scale=1.0):
    """RMSNorm in float64. With `max_scaled`/`mean_scale` it is exactly what a chain of that form computes:
    x / (sqrt(mean((x/m)^2) * s + eps) * m) with m = max|x|, s = mean_scale."""
    x = np.asarray(x, np.float64)
    with np.errstate(all="ignore"):
        ms = np.mean(x * x, axis=axes, keepdims=True) * mean_scale
        if max_scaled:
            m = np.max(np.abs(x), axis=axes, keepdims=True)
            y = x / (np.sqrt(ms / (m * m) + eps) * m)
        else:
            y = x / np.sqrt(ms + eps)
    return y if gamma is None else y * np.asarray(gamma, np.float64)


def self_check(view, blobs, match, new_ops, seed=0):
    rng = np.random.default_rng(seed)
    source = cast_ancestry(view, match.x)[-1]
    shape, shrunk = _check_shape(view, source, match)
    zero_row = tuple(slice(None) if i in match.axes else 0 for i in range(len(shape)))
    rtol, atol = tolerance_for(NUMPY[match.dtype], NUMPY[view.dtype(match.output)])  # the coarser of the two
    strict = not shrunk
    exact = Evaluator(view, blobs, float_dtype=np.float64, strict_shapes=strict)
    original = Evaluator(view, blobs, strict_shapes=strict)
    rewritten = Evaluator(view, blobs, overlay={out.name: op for op in new_ops for out in op.outputs}, strict_shapes=strict)
    wanted = [match.output, match.x] + ([match.gamma] if match.gamma else [])
    result = CheckResult(True)
    for magnitude in MAGNITUDES:
        x = rng.standard_normal(shape) * magnitude
        x[zero_row] = 0.0
        feeds = {source: x.astype(NUMPY[view.dtype(source)])}
        values = exact.evaluate(wanted, feeds)
        gamma = values.get(match.gamma) if match.gamma else None
        as_read = rms_norm_reference(values[match.x], match.axes, match.epsilon, gamma, match.max_scaled, match.mean_scale)
        read = compare(values[match.output], as_read, rtol=READ_RTOL, atol=READ_RTOL * _scale(as_read))
        if not read.passed:
            return CheckResult(
                False, reason=f"mlopt misread this chain: in float64 it differs from the matched RMSNorm by "
                f"{_worst(read):.2g} (relative) at input magnitude {magnitude:g}; not rewritten"
            )
        truth = rms_norm_reference(values[match.x], match.axes, match.epsilon, gamma)
        new = compare(rewritten.evaluate([match.output], feeds)[match.output], truth, rtol=rtol, atol=atol)
        old = compare(original.evaluate([match.output], feeds)[match.output], truth, rtol=rtol, atol=atol)
        result.original_error = max(result.original_error, _worst(old))
        if _worst(new) >= result.error:
            result.error, result.magnitude = _worst(new), magnitude
        if not new.passed and result.passed:
            result.passed = False
            result.reason = (
                f"self-check failed: the rewrite differs from RMSNorm by {_worst(new):.2g} (relative) at input "
                f"magnitude {magnitude:g}; rolled back"
            )
    return result


def _check_shape(view, source, match):
    """The input shape to check with, and whether it is smaller than declared."""
    declared = [view.dim(source, i) for i in range(view.rank(source))]
    full = [d if d is not None else UNKNOWN_DIM for d in declared]
    if match.gamma is not None:
        gamma = view.types[match.gamma].tensorType
        dims = [d.constant.size if d.WhichOneof("dimension") == "constant" else None for d in gamma.dimensions]
        offset = len(full) - len(dims)  # broadcasting aligns trailing axes
        if any(d != 1 and (i + offset) not in match.axes for i, d in enumerate(dims)):
            return full, False
    shape = [d if i in match.axes else min(d, ROWS) for i, d in enumerate(full)]
    return shape, shape != full


def _worst(difference):
    return difference.max_rel if difference.mismatched_nonfinite == 0 else float("inf")


def _scale(values):
    finite = np.isfinite(values)
    return float(np.abs(values[finite]).max()) if finite.any() else 1.0
