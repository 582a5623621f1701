"""Decomposed InstanceNorm -> one native `instance_norm` (channels first) or `layer_norm` (channels last).

coremltools fuses an InstanceNorm at conversion time only in the exact op orders its pass knows; a program
converted with another pipeline, or with the pass off, keeps the chain: two reductions, a square, a root and up to
six elementwise ops over the whole image, where one op does.

    channels first (N, C, H, W), axes (2, 3):
        y = instance_norm(x, eps, gamma(C,), beta(C,))     gamma/beta folded in when they are plain constants with
                                                           one value per channel in x's dtype, and eps keeps its
                                                           value (to 1%) in the type they share with it
        y = instance_norm(x, eps) [* gamma] [+ beta]       otherwise
    channels last (N, H, W, C), axes (1, 2):
        y = layer_norm(x, [1, 2], eps) [* gamma] [+ beta]

instance_norm's definition (coremltools' MIL op definitions, iOS15 and iOS17: x is [N, C, *D], rank 3-4, it
normalises over D, gamma/beta of shape (C,)) fits channels first as it is. Channels last it would need a
transpose to (N, C, H, W) and one back (what coremltools' pass inserts); layer_norm normalises any axes, so it
takes the same axes with no transpose, and a per-channel gamma/beta (which varies off the normalised axes, so
cannot be layer_norm's parameter) is applied after it. Like the LayerNorm rule it rewrites with every
compute-units setting (`--skip instance_norm` turns it off; the chain is then reported, not rewritten).
"""

import math

from .base import Rule
from .instance_norm_pattern import match_instance_norm
from .layer_norm import layer_norm
from .norm_family import NormFamily


class InstanceNormRule(NormFamily, Rule):
    name = "instance_norm"
    title = "InstanceNorm"
    description = "decomposed InstanceNorm chains -> one instance_norm (channels first) or layer_norm (channels last)"
    looks_for = "variance of a mean-centred image over its spatial axes"
    anchors = ("reduce_mean", "reduce_sum", "reduce_sum_square")
    operands = ("gamma", "beta")
    params = ("epsilon",)
    units = None

    def match(self, graph, op):
        return match_instance_norm(graph, op)

    def lower(self, b, m):
        gamma, beta, eps = m.operands.get("gamma"), m.operands.get("beta"), m.params["epsilon"]
        g = bt = None
        if tuple(m.axes) == (2, 3):  # channels first
            channels = b.dim(m.x, 1)
            fold = channels is not None and b.folds_params(m.x, eps)
            g = _per_channel_parameter(b, gamma, m, channels) if fold else None
            # beta folds only where gamma does (or there is none): instance_norm applies gamma first
            bt = _per_channel_parameter(b, beta, m, channels) if fold and (g is not None or gamma is None) else None
            out = b.instance_norm(m.x, eps, g, bt)
        else:
            out = b.layer_norm(m.x, m.axes, eps)
        if gamma is not None and g is None:
            out = b.mul(out, gamma if b.dtype(gamma) == m.dtype else b.cast(gamma, m.dtype))
        if beta is not None and bt is None:
            out = b.add(out, beta if b.dtype(beta) == m.dtype else b.cast(beta, m.dtype))
        return out

    def reference(self, x, operands, axes, params):
        return layer_norm(x, axes, params["epsilon"], operands.get("gamma"), operands.get("beta"))

    def as_read(self, match, x, operands):
        facts = {k: v for k, v in match.facts.items() if k != "layout"}
        return layer_norm(x, match.axes, match.params["epsilon"], operands.get("gamma"), operands.get("beta"), **facts)

    def summary(self, match):
        return f"{match.facts.get('layout', '')}, axes {','.join(map(str, match.axes))}, eps {match.params['epsilon']:.3g}"

    def report_fields(self, match):
        return {"axes": list(match.axes), "layout": match.facts.get("layout"), **match.params}


def _per_channel_parameter(b, value, m, channels):
    """`value` as an instance_norm gamma/beta of shape (C,): a plain constant of x's dtype holding one value per
    channel. None if it is not one (it is then applied after the instance_norm)."""
    if value is None or b.dtype(value) != m.dtype:
        return None
    dims = [b.dim(value, i) for i in range(b.rank(value))]
    if None in dims or math.prod(dims) != channels:  # the pattern allows no other axis but the channel's
        return None
    return b.constant_as(value, [channels])


RULE = InstanceNormRule()
