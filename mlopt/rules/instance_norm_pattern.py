"""The decomposed InstanceNorm pattern: a LayerNorm chain (layer_norm_pattern.py, every spelling it knows) that
normalises each channel of a rank-4 image tensor over its two spatial axes.

    channels first (N, C, H, W): mean and variance over axes (2, 3)
    channels last  (N, H, W, C): mean and variance over axes (1, 2)
    gamma, beta: absent, or per channel - every axis but the channel axis of size 1 once right-aligned to rank 4
                 ((1, C, 1, 1) or (C, 1, 1) channels first, (C,) or (1, 1, 1, C) channels last, or one number)

These are coremltools' instance-norm patterns 1-4 (common::fuse_layernorm_or_instancenorm): x * [gamma * rsqrt(var
+ eps)] + (beta - mean * [gamma * rsqrt(var + eps)]), (x - mean) / pow(var + eps, 0.5) * gamma + beta, TensorFlow-
Addons' x * rsqrt + mean * rsqrt * -1, and the E[x^2] - E[x]^2 variance from reduce_sum * 1/(H*W). The statistic's
exactness conditions are the LayerNorm pattern's: a sum is a mean only when its scale is 1/(H*W) for the real axis
sizes (else the chain is left alone with the scale it has), mean and variance over the same axes, eps inside the
root. A gamma that varies along a normalised axis (a LayerNorm's elementwise affine) is no instance norm: the
LayerNorm rule keeps that chain.
"""

from .layer_norm_pattern import match_layer_norm
from ..patterns.status import NOT_THIS_PATTERN, Matched
from ..patterns.walk import int_axes

RANK = 4
CHANNEL_AXIS = {(2, 3): 1, (1, 2): 3}  # normalised axes -> the channel axis
LAYOUTS = {1: "channels first", 3: "channels last"}


def match_instance_norm(view, anchor):
    """The InstanceNorm pattern anchored at a variance's reduction: Matched with the LayerNorm matcher's Match
    (facts["layout"] added), or NOT_THIS_PATTERN - a near-miss is the LayerNorm rule's to explain."""
    if not _spatial_reduction(view, anchor):  # cheap: most anchors (transformer norms) end here
        return NOT_THIS_PATTERN
    status = match_layer_norm(view, anchor)
    if not isinstance(status, Matched):
        return NOT_THIS_PATTERN
    channel = channel_axis(view, status.match)
    if channel is None:
        return NOT_THIS_PATTERN
    status.match.facts = dict(status.match.facts, layout=LAYOUTS[channel])
    return status


def _spatial_reduction(view, anchor):
    """Whether the anchor reduces a rank-4 tensor over the spatial axes of one of the layouts."""
    x, axes = view.arg(anchor, "x"), int_axes(view.const(anchor, "axes"))
    if x is None or axes is None or view.rank(x) != RANK or any(not -RANK <= a < RANK for a in axes):
        return False
    return tuple(sorted(a % RANK for a in axes)) in CHANNEL_AXIS


def channel_axis(view, match):
    """The channel axis (1 or 3) if the LayerNorm `match` normalises each channel of a rank-4 tensor over its
    spatial axes with a per-channel (or no) gamma and beta; None otherwise."""
    if view.rank(match.x) != RANK:
        return None
    channel = CHANNEL_AXIS.get(tuple(match.axes))
    if channel is None:
        return None
    for value in (match.operands.get("gamma"), match.operands.get("beta")):
        if value is not None and not _per_channel(view, value, channel):
            return None
    return channel


def _per_channel(view, value, channel):
    rank = view.rank(value)
    if rank > RANK:
        return False
    dims = [1] * (RANK - rank) + [view.dim(value, i) for i in range(rank)]
    return all(size == 1 for axis, size in enumerate(dims) if axis != channel)
