"""Elementwise ops: binary arithmetic and comparisons (numpy broadcasting = MIL broadcasting), unary functions,
activations. fp16 inputs compute in fp16, rounding after every op, like an fp16 datapath."""

import math

import numpy as np

from .registry import implementation, numpy_dtype, scalar

_erf = np.vectorize(math.erf, otypes=[np.float64])


def _binary(fn):
    return lambda x, y, **_: fn(np.asarray(x), np.asarray(y))


BINARY = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "real_div": np.true_divide,
    "floor_div": np.floor_divide,
    "mod": np.mod,
    "pow": np.power,
    "maximum": np.maximum,
    "minimum": np.minimum,
    "equal": np.equal,
    "not_equal": np.not_equal,
    "greater": np.greater,
    "greater_equal": np.greater_equal,
    "less": np.less,
    "less_equal": np.less_equal,
    "logical_and": np.logical_and,
    "logical_or": np.logical_or,
    "logical_xor": np.logical_xor,
}
for _name, _fn in BINARY.items():
    implementation(_name)(_binary(_fn))

UNARY = {
    "abs": np.abs,
    "ceil": np.ceil,
    "floor": np.floor,
    "round": np.round,
    "sign": np.sign,
    "exp": np.exp,
    "exp2": np.exp2,
    "sqrt": np.sqrt,
    "square": np.square,
    "sin": np.sin,
    "cos": np.cos,
    "tan": np.tan,
    "tanh": np.tanh,
    "asin": np.arcsin,
    "acos": np.arccos,
    "atan": np.arctan,
    "atanh": np.arctanh,
    "sinh": np.sinh,
    "cosh": np.cosh,
    "logical_not": np.logical_not,
    "identity": lambda x: x,
    "relu": lambda x: np.maximum(x, np.zeros((), x.dtype)),
    "sigmoid": lambda x: (1 / (1 + np.exp(-x.astype(np.float64)))).astype(x.dtype),
    "erf": lambda x: _erf(x).astype(x.dtype),
}
for _name, _fn in UNARY.items():
    implementation(_name)(lambda x, _fn=_fn, **_: _fn(np.asarray(x)))


def _eps(epsilon, default, x):
    return np.asarray(default if epsilon is None else epsilon, dtype=x.dtype)


@implementation("rsqrt")
def rsqrt(x, epsilon=None, **_):
    return 1 / np.sqrt(x + _eps(epsilon, 1e-12, x))


@implementation("inverse")
def inverse(x, epsilon=None, **_):
    return 1 / (x + _eps(epsilon, 1e-4, x))


@implementation("log")
def log(x, epsilon=None, **_):
    return np.log(x + _eps(epsilon, 1e-45, x))


@implementation("silu")
def silu(x, **_):
    return (x * (1 / (1 + np.exp(-x.astype(np.float64))))).astype(x.dtype)


@implementation("gelu")
def gelu(x, mode=None, **_):
    mode = scalar(mode) or "EXACT"
    v = x.astype(np.float64)
    if mode == "EXACT":
        out = 0.5 * v * (1 + _erf(v / math.sqrt(2)))
    elif mode == "TANH_APPROXIMATION":
        out = 0.5 * v * (1 + np.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3)))
    elif mode == "SIGMOID_APPROXIMATION":
        out = v / (1 + np.exp(-1.702 * v))
    else:
        raise ValueError(f"gelu: unknown mode {mode!r}")
    return out.astype(x.dtype)


@implementation("leaky_relu")
def leaky_relu(x, alpha=0.01, **_):
    return np.where(x >= 0, x, x * np.asarray(alpha, x.dtype))


@implementation("relu6")
def relu6(x, **_):
    return np.clip(x, 0, 6).astype(x.dtype)


@implementation("softplus")
def softplus(x, **_):
    return np.logaddexp(0, x.astype(np.float64)).astype(x.dtype)


@implementation("clip")
def clip(x, alpha, beta, **_):
    return np.minimum(np.maximum(x, alpha), beta)


@implementation("select")
def select(cond, a, b, **_):
    return np.where(cond, a, b)


@implementation("cast")
def cast(x, dtype, **_):
    return np.asarray(x).astype(numpy_dtype(dtype))
