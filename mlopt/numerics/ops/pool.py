"""Pooling over the spatial dims of x (N, C, *spatial): max_pool, avg_pool, l2_pool; accumulated in fp32 for fp16.

Padding follows conv (`valid`, `same`, `same_lower`, `custom`). `ceil_mode` rounds the output size up; the extra
positions it reaches past the input and its padding are never counted, as in PyTorch (whose `ceil_mode` MIL's
mirrors), while explicit padding counts in avg_pool's divisor unless `exclude_padding_from_average`.
"""

import numpy as np

from .nn import _same_padding
from .registry import accumulate, implementation, scalar


def _ints(v, n, default):
    return [default] * n if v is None else [int(s) for s in np.asarray(v).reshape(-1)]


def _pool(x, kernel_sizes, strides, pad_type, pad, ceil_mode, reduce):
    """`reduce(taps, valid, padded)`: taps (k, N, C, *out), whether each tap is inside x, inside x or its padding."""
    v = accumulate(x)
    spatial = v.ndim - 2
    kernel = _ints(kernel_sizes, spatial, 1)
    strides = _ints(strides, spatial, 1)
    pad_type = str(scalar(pad_type))
    if pad_type == "custom":
        p = _ints(pad, 2 * spatial, 0)
        pads = [(p[2 * i], p[2 * i + 1]) for i in range(spatial)]
    elif pad_type in ("same", "same_lower"):
        pads = [_same_padding(v.shape[2 + i], kernel[i], strides[i], 1, pad_type == "same_lower") for i in range(spatial)]
    else:
        pads = [(0, 0)] * spatial
    out_size, extra = [], []
    for i in range(spatial):
        span = v.shape[2 + i] + sum(pads[i]) - kernel[i]
        n = (-(-span // strides[i]) if bool(scalar(ceil_mode)) else span // strides[i]) + 1
        out_size.append(n)
        extra.append(max((n - 1) * strides[i] + kernel[i] - v.shape[2 + i] - sum(pads[i]), 0))
    full = [(0, 0), (0, 0)] + [(lo, hi + e) for (lo, hi), e in zip(pads, extra)]
    values = np.pad(v, full)
    inside = np.pad(np.ones(v.shape[2:], bool), full[2:])
    padded = np.pad(np.ones([v.shape[2 + i] + sum(pads[i]) for i in range(spatial)], bool), [(0, e) for e in extra])
    taps, valid, counted = [], [], []
    for k in np.ndindex(*kernel):
        window = tuple(slice(k[i], k[i] + (out_size[i] - 1) * strides[i] + 1, strides[i]) for i in range(spatial))
        taps.append(values[(slice(None), slice(None)) + window])
        valid.append(inside[window])
        counted.append(padded[window])
    return reduce(np.stack(taps), np.stack(valid), np.stack(counted))


@implementation("max_pool")
def max_pool(x, kernel_sizes, pad_type, strides=None, pad=None, ceil_mode=False, **_):
    def reduce(taps, valid, _counted):
        return np.max(np.where(valid[:, None, None], taps, -np.inf), axis=0).astype(taps.dtype)

    return _pool(x, kernel_sizes, strides, pad_type, pad, ceil_mode, reduce)


@implementation("avg_pool")
def avg_pool(x, kernel_sizes, pad_type, strides=None, pad=None, ceil_mode=False, exclude_padding_from_average=False, **_):
    def reduce(taps, valid, counted):
        mask = valid if bool(scalar(exclude_padding_from_average)) else counted
        return np.sum(taps, axis=0) / np.sum(mask, axis=0).astype(taps.dtype)

    return _pool(x, kernel_sizes, strides, pad_type, pad, ceil_mode, reduce)


@implementation("l2_pool")
def l2_pool(x, kernel_sizes, pad_type, strides=None, pad=None, ceil_mode=False, **_):
    return _pool(x, kernel_sizes, strides, pad_type, pad, ceil_mode, lambda taps, *_: np.sqrt(np.sum(taps * taps, axis=0)))
