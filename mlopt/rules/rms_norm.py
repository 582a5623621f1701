"""RMSNorm -> the LayerNorm trick (first shown by the ANEMLL project), for the Neural Engine.

    neg  = mul(x, -1)
    both = concat([x, neg], axis)               # axis = the first normalised axis; mean 0, variance = mean(x^2)
    ln   = layer_norm(both, axes, eps)          # = [x, -x] / sqrt(mean(x^2) + eps), over all normalised axes
    y    = slice_along(ln, axis, 0, size)       # the first half
    out  = mul(y, gamma)                        # when the chain had a gamma

Everything runs in x's dtype (the dtype outside any cast wrapper). On the Neural Engine the chain it replaces
squares in fp16 (x^2 overflows past |x| ~ 256) and its fp32 islands leave the engine; layer_norm does neither.
The trick pays only where the Neural Engine is targeted explicitly, so it rewrites with CPU_AND_NE only.
The pattern, in every spelling mlopt knows, is in rms_norm_pattern.py.
"""

import math

import numpy as np

from ..graph.dtypes import FLOAT16
from .base import Rule
from .norm_family import NormFamily
from .rms_norm_pattern import match_rms_norm


class RMSNormRule(NormFamily, Rule):
    name = "rms_norm"
    title = "RMSNorm"
    description = "RMSNorm chains -> layer_norm(concat([x, -x])) (the LayerNorm trick), with CPU_AND_NE"
    looks_for = "reduce_mean/reduce_sum of a squared tensor"
    anchors = ("reduce_mean", "reduce_sum", "reduce_sum_square", "reduce_l2_norm", "layer_norm")
    operands = ("gamma",)
    params = ("epsilon",)
    units_reason = "the LayerNorm trick only pays where the Neural Engine is targeted explicitly (CPU_AND_NE)"

    def match(self, graph, op):
        return match_rms_norm(graph, op)

    def lower(self, b, m):
        x, axis = m.x, m.axes[0]
        size = b.dim(x, axis)
        neg = b.mul(x, b.const(-1.0, m.dtype))
        normed = b.layer_norm(b.concat([x, neg], axis), m.axes, m.params["epsilon"])
        out = b.slice_along(normed, axis, 0, size)
        gamma = m.operands.get("gamma")
        if gamma is None:
            return out
        if b.dtype(gamma) != m.dtype:
            gamma = b.cast(gamma, m.dtype)
        return b.mul(out, gamma)

    def reference(self, x, operands, axes, params):
        return rms_norm(x, axes, params["epsilon"], operands.get("gamma"))

    def as_read(self, match, x, operands):
        return rms_norm(x, match.axes, gamma=operands.get("gamma"), **match.facts)

    def accumulation_note(self, graph, anchor, match):
        return overflow_note(graph, anchor, match)

    def summary(self, match):
        return f"axes {','.join(map(str, match.axes))}, eps {match.params['epsilon']:.3g}"


def rms_norm(x, axes, eps, gamma=None, mean_scale=1.0, max_scaled=False, floor=0.0, eps_m2=0.0):
    """RMSNorm in float64: x / sqrt(mean(x^2, axes) + eps) [* gamma]. The keywords give exactly what a chain of
    a scaled spelling computes: the mean times `mean_scale` (a sum's 1/N as stored), and with `max_scaled`
    m = max(max|x|, floor) over the axes and x / (sqrt(mean((x/m)^2) + eps + eps_m2 / m^2) * m) - an eps the
    chain adds directly is inflated by m^2; one it adds as eps_m2 / m^2 is exact."""
    x = np.asarray(x, np.float64)
    with np.errstate(all="ignore"):
        ms = np.mean(x * x, axis=tuple(axes), keepdims=True) * mean_scale
        if max_scaled:
            m = np.maximum(np.max(np.abs(x), axis=tuple(axes), keepdims=True), floor)
            y = x / (np.sqrt(ms / (m * m) + eps + eps_m2 / (m * m)) * m)
        else:
            y = x / np.sqrt(ms + eps + eps_m2)
        return y if gamma is None else y * np.asarray(gamma, np.float64)


FP16_MAX = 65504.0


def overflow_note(graph, anchor, match):
    """The input RMS at which each side overflows fp16 when reductions accumulate in fp16 (`verify --accumulate
    fp16`, the pessimistic model): the original's x^2 past |x| = sqrt(65504) = 255.9, its mean of squares once
    N * RMS^2 > 65504; the rewrite's layer_norm sums the squares of 2N values ([x, -x]), so once
    2N * RMS^2 > 65504. With fp32 accumulation only the x^2 limit remains, and only on the original side."""
    sizes = [graph.dim(match.x, a) for a in match.axes]
    if graph.dtype(match.x) != FLOAT16 or any(s is None for s in sizes):
        return None
    n = math.prod(sizes)
    return (
        f"chain at '{anchor}' (N = {n}), fp16 accumulation: the original overflows once |x| > "
        f"{math.sqrt(FP16_MAX):.1f} or RMS > {math.sqrt(FP16_MAX / n):.3g}; the rewrite once RMS > "
        f"{math.sqrt(FP16_MAX / (2 * n)):.3g} (with fp32 accumulation: the original past |x| > "
        f"{math.sqrt(FP16_MAX):.1f}, the rewrite never)"
    )


RULE = RMSNormRule()
