"""Decomposed LayerNorm -> one native `layer_norm`.

coremltools fuses LayerNorm at conversion time only for the spellings its own pass knows; chains with fp32 cast
wrappers (mixed precision), the E[x^2] - E[x]^2 variance, a division instead of rsqrt, a channel-axis norm, or
programs from other converters stay decomposed. On the Neural Engine such a chain squares in fp16 (overflow past
|x - mean| ~ 256) and its fp32 islands leave the engine; `layer_norm` does neither. As coremltools' own fusion,
it rewrites for every compute-unit setting (`--skip layer_norm` turns it off). A chain that normalises each channel
of an image over its spatial axes is the InstanceNorm rule's (instance_norm.py): this rule reports it as such.

    y = layer_norm(x, axes, eps, gamma, beta)     gamma/beta folded in when they are plain constants of the
                                                  normalised shape in x's dtype, and eps keeps its value
                                                  (to 1%) in the type they share with it (a folded beta
                                                  without a gamma gets a gamma of ones); otherwise
    y = layer_norm(x, axes, eps) [* gamma] [+ beta]
"""

import numpy as np

from ..patterns.status import Matched, Recognised
from .base import Rule
from .instance_norm_pattern import channel_axis
from .norm_family import NormFamily
from .layer_norm_pattern import match_layer_norm


class LayerNormRule(NormFamily, Rule):
    name = "layer_norm"
    title = "LayerNorm"
    description = "decomposed LayerNorm chains -> one layer_norm, with every compute-units setting"
    looks_for = "variance of a mean-centred tensor"
    anchors = ("reduce_mean", "reduce_sum", "reduce_sum_square")
    operands = ("gamma", "beta")
    params = ("epsilon",)
    units = None

    def match(self, graph, op):
        status = match_layer_norm(graph, op)
        if isinstance(status, Matched) and channel_axis(graph, status.match) is not None:
            return Recognised("InstanceNorm", "the instance_norm rule rewrites it", status.form, status.ops)
        return status

    def lower(self, b, m):
        shape = [b.dim(m.x, a) for a in m.axes]
        gamma, beta = m.operands.get("gamma"), m.operands.get("beta")
        fold = b.folds_params(m.x, m.params["epsilon"])
        g = _as_parameter(b, gamma, m, shape) if fold else None
        # beta folds only where gamma does (or there is none): layer_norm applies gamma first
        bt = _as_parameter(b, beta, m, shape) if fold and (g is not None or gamma is None) else None
        if bt is not None and g is None:  # coremltools' layer_norm checks beta's shape against gamma's (iOS15
            g = b.const(np.ones(shape), m.dtype)  # type_inference reads gamma.shape): a beta needs a gamma
        out = b.layer_norm(m.x, m.axes, m.params["epsilon"], g, bt)
        if gamma is not None and g is None:
            out = b.mul(out, gamma if b.dtype(gamma) == m.dtype else b.cast(gamma, m.dtype))
        if beta is not None and bt is None:
            out = b.add(out, beta if b.dtype(beta) == m.dtype else b.cast(beta, m.dtype))
        return out

    def reference(self, x, operands, axes, params):
        return layer_norm(x, axes, params["epsilon"], operands.get("gamma"), operands.get("beta"))

    def as_read(self, match, x, operands):
        return layer_norm(x, match.axes, match.params["epsilon"], operands.get("gamma"), operands.get("beta"), **match.facts)

    def summary(self, match):
        return f"axes {','.join(map(str, match.axes))}, eps {match.params['epsilon']:.3g}"


def _as_parameter(b, value, m, shape):
    """`value` as a layer_norm gamma/beta: a plain constant of x's dtype that varies along the normalised axes
    only, reshaped to their sizes. None if it is not one (it is then applied after the layer_norm)."""
    if value is None or b.dtype(value) != m.dtype or None in shape:
        return None
    rank, x_rank = b.rank(value), b.rank(m.x)
    if rank > x_rank:
        return None
    dims = [1] * (x_rank - rank) + [b.dim(value, i) for i in range(rank)]
    if any(dims[i] != 1 for i in range(x_rank) if i not in m.axes):
        return None
    if any(dims[a] != size for a, size in zip(m.axes, shape)):  # broadcast along a normalised axis: not folded
        return None
    return b.constant_as(value, shape)


def layer_norm(x, axes, eps, gamma=None, beta=None, var_scale=1.0, mean_scale=1.0, var_mean_scale=1.0, moments=False):
    """LayerNorm in float64: (x - mean) / sqrt(var + eps) [* gamma] [+ beta] over `axes`. The keywords give exactly
    what a chain computes: its variance's scale (a sum's 1/N as stored), the scales of the mean it centres x with
    and of the mean its variance uses, and whether the variance is E[x^2] - E[x]^2 (`moments`)."""
    x = np.asarray(x, np.float64)
    axes = tuple(axes)
    with np.errstate(all="ignore"):
        mean = np.mean(x, axis=axes, keepdims=True)
        d = x - mean * mean_scale
        if moments:
            var = np.mean(x * x, axis=axes, keepdims=True) * var_scale - (mean * var_mean_scale) ** 2
        else:
            dv = x - mean * var_mean_scale
            var = np.mean(dv * dv, axis=axes, keepdims=True) * var_scale
        y = d / np.sqrt(var + eps)
        if gamma is not None:
            y = y * np.asarray(gamma, np.float64)
        return y if beta is None else y + np.asarray(beta, np.float64)


RULE = LayerNormRule()
