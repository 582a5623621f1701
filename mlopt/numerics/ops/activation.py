"""Parametric activations (alpha/beta given by the op): elementwise like the rest, so fp16 stays fp16.

The definitions are MIL's docstrings; prelu and softplus_parametric take per-channel parameters on axis 1 (NC...),
which `_channel` places there.
"""

import numpy as np

from .registry import implementation


def _p(v, x):
    """A parameter in x's dtype: an fp32 alpha must not promote an fp16 activation to fp32."""
    return np.asarray(v, x.dtype)


def _channel(v, x):
    """A per-channel parameter (C,) broadcast against x (N, C, ...)."""
    return _p(v, x).reshape((1, -1) + (1,) * (x.ndim - 2))


@implementation("elu")
def elu(x, alpha, **_):
    return np.where(x > 0, x, _p(alpha, x) * np.expm1(x))


@implementation("thresholded_relu")
def thresholded_relu(x, alpha, **_):
    return np.where(x >= _p(alpha, x), x, np.zeros((), x.dtype))


@implementation("threshold")
def threshold(x, alpha, **_):
    return np.maximum(x, _p(alpha, x))


@implementation("clamped_relu")
def clamped_relu(x, alpha, beta, **_):
    return np.minimum(np.where(x >= 0, x, _p(alpha, x) * x), _p(beta, x))


@implementation("linear_activation")
def linear_activation(x, alpha, beta, **_):
    return _p(alpha, x) * x + _p(beta, x)


@implementation("scaled_tanh")
def scaled_tanh(x, alpha, beta, **_):
    return _p(alpha, x) * np.tanh(_p(beta, x) * x)


@implementation("sigmoid_hard")
def sigmoid_hard(x, alpha, beta, **_):
    return np.clip(_p(alpha, x) * x + _p(beta, x), 0, 1).astype(x.dtype)


@implementation("softsign")
def softsign(x, **_):
    return x / (1 + np.abs(x))


@implementation("prelu")
def prelu(x, alpha, **_):
    return np.where(x >= 0, x, _channel(alpha, x) * x)


@implementation("softplus_parametric")
def softplus_parametric(x, alpha, beta, **_):
    return _channel(alpha, x) * np.logaddexp(np.zeros((), x.dtype), _channel(beta, x) * x)
