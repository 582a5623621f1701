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
casts), and nothing else of the model is computed. Rows are independent, so all magnitudes share one input of a
few rows (unless gamma varies along an axis that is not normalised): a (1, 512, 2048) activation is checked as
(1, 7, 2048), and the check costs the same for any sequence length.
"""

from dataclasses import dataclass

import numpy as np

from ..graph.dtypes import NUMPY
from ..patterns.walk import cast_ancestry
from .compare import compare, tolerance_for
from .interpreter import Evaluator

MAGNITUDES = (1e-2, 1.0, 300.0)
UNKNOWN_DIM = 2
ROWS_PER_MAGNITUDE = 2
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


@dataclass
class _Batch:
    """One input to evaluate, and which part of it holds which magnitude."""

    x: np.ndarray
    parts: list  # [(magnitude, index into the output)]


def self_check(view, blobs, match, new_ops, seed=0):
    source = cast_ancestry(view, match.x)[-1]
    batches, strict = _batches(view, source, match, np.random.default_rng(seed))
    rtol, atol = tolerance_for(NUMPY[match.dtype], NUMPY[view.dtype(match.output)])  # the coarser of the two
    exact = Evaluator(view, blobs, float_dtype=np.float64, strict_shapes=strict)
    original = Evaluator(view, blobs, strict_shapes=strict)
    rewritten = Evaluator(view, blobs, overlay={out.name: op for op in new_ops for out in op.outputs}, strict_shapes=strict)
    wanted = [match.output, match.x] + ([match.gamma] if match.gamma else [])
    result = CheckResult(True)
    for batch in batches:
        feeds = {source: batch.x.astype(NUMPY[view.dtype(source)])}
        values = exact.evaluate(wanted, feeds)
        gamma = values.get(match.gamma) if match.gamma else None
        as_read = rms_norm_reference(values[match.x], match.axes, match.epsilon, gamma, match.max_scaled, match.mean_scale)
        truth = rms_norm_reference(values[match.x], match.axes, match.epsilon, gamma)
        new = rewritten.evaluate([match.output], feeds)[match.output]
        old = original.evaluate([match.output], feeds)[match.output]
        for magnitude, part in batch.parts:
            read = compare(values[match.output][part], as_read[part], rtol=READ_RTOL, atol=READ_RTOL * _scale(as_read[part]))
            if not read.passed:
                return CheckResult(
                    False, reason=f"mlopt misread this chain: in float64 it differs from the matched RMSNorm by "
                    f"{_worst(read):.2g} (relative) at input magnitude {magnitude:g}; not rewritten"
                )
            new_diff = compare(new[part], truth[part], rtol=rtol, atol=atol)
            result.original_error = max(result.original_error, _worst(compare(old[part], truth[part], rtol=rtol, atol=atol)))
            if _worst(new_diff) >= result.error:
                result.error, result.magnitude = _worst(new_diff), magnitude
            if not new_diff.passed and result.passed:
                result.passed = False
                result.reason = (
                    f"self-check failed: the rewrite differs from RMSNorm by {_worst(new_diff):.2g} (relative) at "
                    f"input magnitude {magnitude:g}; rolled back"
                )
    return result


def _batches(view, source, match, rng):
    """The inputs to check with, and whether their shapes are the declared ones (strict).

    Rows are independent, so normally one batch does: every axis that is not normalised has size 1 except one row
    axis holding an all-zero row and ROWS_PER_MAGNITUDE rows per magnitude. If gamma varies along an axis that is
    not normalised (or there is none), each magnitude gets the declared shape instead."""
    declared = [view.dim(source, i) for i in range(view.rank(source))]
    full = [d if d is not None else UNKNOWN_DIM for d in declared]
    free = [i for i in range(len(full)) if i not in match.axes]
    if free and not _gamma_varies_off_axes(view, match, len(full)):
        row_axis = free[-1]
        shape = [d if i in match.axes else 1 for i, d in enumerate(full)]
        shape[row_axis] = 1 + ROWS_PER_MAGNITUDE * len(MAGNITUDES)
        x = np.zeros(shape)
        parts = []
        for k, magnitude in enumerate(MAGNITUDES):
            rows = slice(1 + k * ROWS_PER_MAGNITUDE, 1 + (k + 1) * ROWS_PER_MAGNITUDE)
            index = tuple(rows if i == row_axis else slice(None) for i in range(len(shape)))
            x[index] = rng.standard_normal(x[index].shape) * magnitude
            parts.append((magnitude, index if k else tuple(slice(0, rows.stop) if i == row_axis else slice(None) for i in range(len(shape)))))
        return [_Batch(x, parts)], shape == full
    batches = []
    for magnitude in MAGNITUDES:
        x = rng.standard_normal(full) * magnitude
        if free:
            x[tuple(slice(None) if i in match.axes else 0 for i in range(len(full)))] = 0.0
        batches.append(_Batch(x, [(magnitude, ...)]))
    return batches, True


def _gamma_varies_off_axes(view, match, rank):
    if match.gamma is None:
        return False
    dims = view.types[match.gamma].tensorType.dimensions
    offset = rank - len(dims)  # broadcasting aligns trailing axes
    return any(
        not (d.WhichOneof("dimension") == "constant" and d.constant.size == 1) and (i + offset) not in match.axes
        for i, d in enumerate(dims)
    )


def _worst(difference):
    return difference.max_rel if difference.mismatched_nonfinite == 0 else float("inf")


def _scale(values):
    finite = np.isfinite(values)
    return float(np.abs(values[finite]).max()) if finite.any() else 1.0
