"""Reductions and normalisations, accumulated in fp32 for fp16 inputs (then rounded to the declared dtype)."""

import numpy as np

from .registry import accumulate, axes_tuple, implementation, mean, scalar


def _reduce(fn):
    def run(x, axes=None, keep_dims=False, **_):
        x = np.asarray(x)
        return fn(accumulate(x), axis=axes_tuple(axes, x.ndim), keepdims=bool(scalar(keep_dims)))

    return run


REDUCTIONS = {
    "reduce_mean": mean,
    "reduce_sum": np.sum,
    "reduce_max": np.max,
    "reduce_min": np.min,
    "reduce_prod": np.prod,
    "reduce_l2_norm": lambda x, axis, keepdims: np.sqrt(np.sum(x * x, axis=axis, keepdims=keepdims)),
    "reduce_l1_norm": lambda x, axis, keepdims: np.sum(np.abs(x), axis=axis, keepdims=keepdims),
    "reduce_sum_square": lambda x, axis, keepdims: np.sum(x * x, axis=axis, keepdims=keepdims),
    "reduce_log_sum": lambda x, axis, keepdims: np.log(np.sum(x, axis=axis, keepdims=keepdims)),
    "reduce_log_sum_exp": lambda x, axis, keepdims: np.logaddexp.reduce(x, axis=axis, keepdims=keepdims),
}
for _name, _fn in REDUCTIONS.items():
    implementation(_name)(_reduce(_fn))


def _arg_reduce(fn):
    def run(x, axis=-1, keep_dims=False, **_):
        out = fn(np.asarray(x), axis=int(scalar(axis)))
        return np.expand_dims(out, int(scalar(axis))) if bool(scalar(keep_dims)) else out

    return run


implementation("reduce_argmax")(_arg_reduce(np.argmax))
implementation("reduce_argmin")(_arg_reduce(np.argmin))


@implementation("softmax")
def softmax(x, axis=-1, **_):
    v = accumulate(x)
    axis = int(scalar(axis))
    e = np.exp(v - np.max(v, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


@implementation("layer_norm")
def layer_norm(x, axes=None, gamma=None, beta=None, epsilon=1e-5, **_):
    v = accumulate(x)
    axes = axes_tuple(axes, v.ndim) if axes is not None else tuple(range(v.ndim))
    centre = mean(v, axis=axes, keepdims=True)
    var = mean(np.square(v - centre), axis=axes, keepdims=True)
    out = (v - centre) / np.sqrt(var + np.asarray(epsilon, v.dtype))
    # gamma and beta have the shape of the normalised axes: place them on those axes
    shape = [v.shape[i] if i in axes else 1 for i in range(v.ndim)]
    if gamma is not None:
        out = out * accumulate(gamma).reshape(shape)
    if beta is not None:
        out = out + accumulate(beta).reshape(shape)
    return out
