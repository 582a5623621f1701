"""Comparing two tensors: the error measures `verify` prints and the tolerances pass/fail uses.

A pair passes when every element satisfies |a - b| <= atol + rtol * |b| (numpy's allclose) with the tolerance of
the coarser dtype, and NaN/inf stand in the same places. The relative error printed is max |a - b| / max |b|, which
stays meaningful where b is near 0. Non-finite values are compared by position, never by arithmetic, and numpy's
floating-point warnings (inf - inf) are silenced: they are the models', not ours, and must not reach stderr.
"""

from dataclasses import dataclass

import numpy as np

# (rtol, atol) by dtype: fp16 has an 11-bit significand (ulp 2^-10 ~ 1e-3 near 1), fp32 a 24-bit one.
TOLERANCES = {np.dtype(np.float16): (1e-2, 1e-2), np.dtype(np.float32): (1e-4, 1e-5), np.dtype(np.float64): (1e-7, 1e-9)}
EXACT = (0.0, 0.0)


def tolerance_for(*dtypes):
    tols = [TOLERANCES.get(np.dtype(d), EXACT) for d in dtypes]
    return max(t[0] for t in tols), max(t[1] for t in tols)


@dataclass
class Difference:
    max_abs: float
    max_rel: float
    mismatched_nonfinite: int  # elements where NaN/inf of a and b differ
    passed: bool
    rtol: float
    atol: float
    scale: float = 0.0  # max |b| over the elements finite in both: what max_rel divides by


def combine(parts):
    """One Difference for a pair compared in pieces (flat slices): the numbers comparing it whole gives. Analyses
    compare large tensors slice by slice so the float64 temporaries stay small."""
    max_abs = max((p.max_abs for p in parts), default=0.0)
    scale = max((p.scale for p in parts), default=0.0)
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    rtol, atol = (parts[0].rtol, parts[0].atol) if parts else EXACT
    return Difference(max_abs, max_rel, sum(p.mismatched_nonfinite for p in parts), all(p.passed for p in parts), rtol, atol, scale)


def compare(a, b, rtol=None, atol=None):
    with np.errstate(all="ignore"):
        return _compare(np.asarray(a), np.asarray(b), rtol, atol)


def _compare(a, b, rtol, atol):
    default_rtol, default_atol = tolerance_for(a.dtype, b.dtype)
    rtol = default_rtol if rtol is None else rtol
    atol = default_atol if atol is None else atol
    if a.shape != b.shape:
        return Difference(float("inf"), float("inf"), 0, False, rtol, atol)
    if a.dtype.kind not in "fc" and b.dtype.kind not in "fc":
        equal = bool(np.array_equal(a, b))
        return Difference(0.0 if equal else float("inf"), 0.0 if equal else float("inf"), 0, equal, rtol, atol)
    x, y = a.astype(np.float64), b.astype(np.float64)
    finite = np.isfinite(x) & np.isfinite(y)
    same_nonfinite = (np.isnan(x) & np.isnan(y)) | ((x == y) & ~np.isnan(x))
    mismatched = int(np.sum(~finite & ~same_nonfinite))
    diff = np.abs(x - y)[finite]
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(y[finite]).max()) if diff.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    close = bool(np.all(diff <= atol + rtol * np.abs(y[finite]))) if diff.size else True
    return Difference(max_abs, max_rel, mismatched, close and mismatched == 0, rtol, atol, scale)
