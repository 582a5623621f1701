"""Ops that only move elements: stack, pad, crop, flatten2d, reshape_like, fill_like, sliding_windows, and the
block rearrangements (space/depth/batch, pixel shuffles) and nearest-neighbour upsampling on NCHW tensors.

The block orders: space_to_depth/depth_to_space are TensorFlow's (DCR: a channel index is (block row, block col,
channel)), as coremltools' TF frontend maps them 1:1; pixel_shuffle/pixel_unshuffle are PyTorch's (CRD: (channel,
block row, block col)); space_to_batch/batch_to_space are TF's space_to_batch_nd/batch_to_space_nd in NCHW layout.
"""

import math

import numpy as np

from .registry import implementation, scalar


def _ints(v):
    return [int(s) for s in np.asarray(v).reshape(-1)]


@implementation("stack")
def stack(values, axis, **_):
    return np.stack(values, axis=int(scalar(axis)))


@implementation("pad")
def pad(x, pad, mode="constant", constant_val=0.0, **_):
    """`pad` lists (before, after) pairs for the last len(pad)/2 dims."""
    p = _ints(pad)
    widths = [(0, 0)] * (x.ndim - len(p) // 2) + [(p[2 * i], p[2 * i + 1]) for i in range(len(p) // 2)]
    mode = str(scalar(mode))
    if mode == "constant":
        return np.pad(x, widths, constant_values=np.asarray(constant_val, x.dtype))
    if mode in ("reflect", "replicate"):
        return np.pad(x, widths, mode="reflect" if mode == "reflect" else "edge")
    raise ValueError(f"pad: unknown mode {mode!r}")


@implementation("crop")
def crop(x, crop_height, crop_width, **_):
    (top, bottom), (left, right) = _ints(crop_height), _ints(crop_width)
    return x[..., top : x.shape[-2] - bottom, left : x.shape[-1] - right]


@implementation("flatten2d")
def flatten2d(x, axis=1, **_):
    axis = int(scalar(axis)) % x.ndim if x.ndim else 0
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


@implementation("fill_like")
def fill_like(ref_tensor, value=0.0, **_):
    return np.full(np.shape(ref_tensor), value)


@implementation("reshape_like")
def reshape_like(x, ref_tensors, begins, ends, end_masks, **_):
    """x reshaped to the concatenation of ref_tensors[i].shape[begins[i]:ends[i]] (to the end where end_masks[i])."""
    shape = []
    for ref, b, e, m in zip(ref_tensors, _ints(begins), _ints(ends), np.asarray(end_masks).reshape(-1)):
        shape += list(np.shape(ref)[b : None if m else e])
    return x.reshape(shape)


@implementation("sliding_windows")
def sliding_windows(x, axis, size, stride=1, **_):
    """Windows of `size` every `stride` along `axis`: shape x.shape[:axis] + [windows, size] + x.shape[axis+1:]."""
    axis, size, stride = int(scalar(axis)) % x.ndim, int(scalar(size)), int(scalar(stride))
    windows = np.lib.stride_tricks.sliding_window_view(x, size, axis=axis)  # window dim last
    windows = np.moveaxis(windows, -1, axis + 1)
    index = (slice(None),) * axis + (slice(None, None, stride),)
    return np.ascontiguousarray(windows[index])


def _blocks_to_channels(x, b, channel_first):
    """(N, C, H, W) -> (N, C*b*b, H/b, W/b): channel index (c, i, j) if channel_first (CRD) else (i, j, c) (DCR)."""
    n, c, h, w = x.shape
    v = x.reshape(n, c, h // b, b, w // b, b)
    order = (0, 1, 3, 5, 2, 4) if channel_first else (0, 3, 5, 1, 2, 4)
    return v.transpose(order).reshape(n, c * b * b, h // b, w // b)


def _channels_to_blocks(x, b, channel_first):
    n, c, h, w = x.shape
    if channel_first:
        v = x.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    else:
        v = x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
    return v.reshape(n, c // (b * b), h * b, w * b)


@implementation("space_to_depth")
def space_to_depth(x, block_size, **_):
    return _blocks_to_channels(x, int(scalar(block_size)), channel_first=False)


@implementation("depth_to_space")
def depth_to_space(x, block_size, **_):
    return _channels_to_blocks(x, int(scalar(block_size)), channel_first=False)


@implementation("pixel_unshuffle")
def pixel_unshuffle(x, downscale_factor, **_):
    return _blocks_to_channels(x, int(scalar(downscale_factor)), channel_first=True)


@implementation("pixel_shuffle")
def pixel_shuffle(x, upscale_factor, **_):
    return _channels_to_blocks(x, int(scalar(upscale_factor)), channel_first=True)


@implementation("space_to_batch")
def space_to_batch(x, block_shape, paddings, **_):
    """(N, C, *spatial) padded, then each block offset becomes a batch slab: (prod(block)*N, C, *spatial/block)."""
    block, p = _ints(block_shape), _ints(paddings)
    k = len(block)
    v = np.pad(x, [(0, 0), (0, 0)] + [(p[2 * i], p[2 * i + 1]) for i in range(k)])
    n, c, spatial = v.shape[0], v.shape[1], v.shape[2:]
    split = [n, c] + [d for s, b in zip(spatial, block) for d in (s // b, b)]
    order = [3 + 2 * i for i in range(k)] + [0, 1] + [2 + 2 * i for i in range(k)]
    return v.reshape(split).transpose(order).reshape([math.prod(block) * n, c] + [s // b for s, b in zip(spatial, block)])


@implementation("batch_to_space")
def batch_to_space(x, block_shape, crops, **_):
    block, cr = _ints(block_shape), _ints(crops)
    k = len(block)
    n, c, spatial = x.shape[0] // math.prod(block), x.shape[1], x.shape[2:]
    v = x.reshape(block + [n, c] + list(spatial))
    order = [k, k + 1] + [d for i in range(k) for d in (k + 2 + i, i)]
    v = v.transpose(order).reshape([n, c] + [s * b for s, b in zip(spatial, block)])
    index = tuple(slice(cr[2 * i], v.shape[2 + i] - cr[2 * i + 1]) for i in range(k))
    return v[(slice(None), slice(None)) + index]


@implementation("upsample_nearest_neighbor")
def upsample_nearest_neighbor(x, scale_factor_height=1, scale_factor_width=1, **_):
    """Output pixel (i, j) copies input (floor(i / scale_h), floor(j / scale_w)) on the last two dims."""
    out = x
    for axis, scale in ((-2, float(scalar(scale_factor_height))), (-1, float(scalar(scale_factor_width)))):
        n = x.shape[axis]
        source = np.minimum(np.floor(np.arange(int(math.floor(n * scale))) / scale).astype(np.int64), n - 1)
        out = np.take(out, source, axis=axis)
    return out
