"""scaled_dot_product_attention (iOS18) and quantize/dequantize (iOS17), accumulated in fp32 for fp16."""

import math

import numpy as np

from .registry import accumulate, implementation, numpy_dtype, scalar


@implementation("scaled_dot_product_attention")
def scaled_dot_product_attention(query, key, value, attn_mask=None, **_):
    """softmax(Q K^T / sqrt(E) + mask) V; a bool mask keeps where True (-inf elsewhere), a float mask is added."""
    q, k, v = accumulate(query), accumulate(key), accumulate(value)
    scores = q @ np.swapaxes(k, -1, -2) / np.asarray(math.sqrt(q.shape[-1]), q.dtype)
    if attn_mask is not None:
        mask = np.asarray(attn_mask)
        scores = np.where(mask, scores, -np.inf) if mask.dtype == np.bool_ else scores + accumulate(mask)
    scores = np.exp(scores - np.max(scores, axis=-1, keepdims=True))
    return (scores / np.sum(scores, axis=-1, keepdims=True)) @ v


def _per_axis(p, x, axis):
    """A quantization parameter: scalar, or a vector on `axis`."""
    p = np.asarray(p)
    if p.ndim == 0 or axis is None:
        return p
    shape = [1] * x.ndim
    shape[int(scalar(axis)) % x.ndim] = -1
    return p.reshape(shape)


@implementation("quantize")
def quantize(input, scale, output_dtype, zero_point=None, axis=None, **_):
    target = numpy_dtype(output_dtype)
    info = np.iinfo(target)
    zp = 0 if zero_point is None else _per_axis(zero_point, input, axis).astype(np.float32)
    q = np.round(accumulate(input) / _per_axis(scale, input, axis).astype(np.float32) + zp)
    return np.clip(q, info.min, info.max).astype(target)


@implementation("dequantize")
def dequantize(input, scale, zero_point=None, axis=None, **_):
    v = np.asarray(input).astype(np.float32)
    if zero_point is not None:
        v = v - _per_axis(zero_point, input, axis).astype(np.float32)
    return v * _per_axis(scale, input, axis).astype(np.float32)
