"""Normalisations on the channel axis 1 of NC... tensors (batch_norm, instance_norm, local_response_norm) and
l2_norm over the last three dims; accumulated in fp32 for fp16 (layer_norm lives in reduction.py)."""

import numpy as np

from .registry import accumulate, implementation, scalar


def _channel(v, x):
    return accumulate(v).reshape((1, -1) + (1,) * (x.ndim - 2))


def _affine(out, x, gamma, beta):
    if gamma is not None:
        out = out * _channel(gamma, x)
    if beta is not None:
        out = out + _channel(beta, x)
    return out


@implementation("batch_norm")
def batch_norm(x, mean, variance, gamma=None, beta=None, epsilon=1e-5, **_):
    v = accumulate(x)
    out = (v - _channel(mean, v)) / np.sqrt(_channel(variance, v) + np.asarray(epsilon, v.dtype))
    return _affine(out, v, gamma, beta)


@implementation("instance_norm")
def instance_norm(x, gamma=None, beta=None, epsilon=1e-5, **_):
    v = accumulate(x)
    axes = tuple(range(2, v.ndim))
    mean = np.mean(v, axis=axes, keepdims=True)
    var = np.mean(np.square(v - mean), axis=axes, keepdims=True)
    return _affine((v - mean) / np.sqrt(var + np.asarray(epsilon, v.dtype)), v, gamma, beta)


@implementation("l2_norm")
def l2_norm(x, epsilon=1e-6, **_):
    v = accumulate(x)
    return v / np.sqrt(np.sum(v * v, axis=(-3, -2, -1), keepdims=True) + np.asarray(epsilon, v.dtype))


@implementation("local_response_norm")
def local_response_norm(x, size, alpha=1e-4, beta=0.75, k=1.0, **_):
    """x / (k + alpha/size * sum of x^2 over channels [c - (size-1)//2, c + size//2])^beta."""
    v = accumulate(x)
    size = int(scalar(size))
    sq = np.pad(np.square(v), [(0, 0), ((size - 1) // 2, size // 2)] + [(0, 0)] * (v.ndim - 2))
    window = sum(sq[:, i : i + v.shape[1]] for i in range(size))
    return v / np.power(np.asarray(k, v.dtype) + np.asarray(alpha, v.dtype) / size * window, np.asarray(beta, v.dtype))
