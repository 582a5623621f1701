"""Index-driven ops: gather_nd, the scatters, one_hot, non_zero, sorting (topk, argsort), cumsum, reversals.

Scatters apply updates with `ufunc.at`, so repeated indices accumulate in order, as MIL's modes define; values
are immutable, so every scatter writes into a copy of `data`.
"""

import numpy as np

from .registry import accumulate, implementation, numpy_dtype, scalar

SCATTER_MODES = {
    "update": None,
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "div": np.true_divide,
    "max": np.maximum,
    "min": np.minimum,
}


def _scatter(data, index, updates, mode):
    mode = str(scalar(mode))
    if mode not in SCATTER_MODES:
        raise ValueError(f"scatter: unknown mode {mode!r}")
    out = np.array(data, copy=True)
    updates = np.asarray(updates, out.dtype)
    if SCATTER_MODES[mode] is None:
        out[index] = updates
    else:
        SCATTER_MODES[mode].at(out, index, updates)
    return out


def _int(v):
    return np.asarray(v).astype(np.int64)


@implementation("scatter")
def scatter(data, indices, updates, axis=0, mode="add", **_):
    """data[..., indices[i], ...] (on `axis`) op= updates[..., i, ...]."""
    axis = int(scalar(axis)) % data.ndim
    return _scatter(data, (slice(None),) * axis + (_int(indices),), updates, mode)


@implementation("scatter_along_axis")
def scatter_along_axis(data, indices, updates, axis=0, mode="add", **_):
    axis = int(scalar(axis)) % data.ndim
    indices = _int(indices)
    grid = list(np.indices(indices.shape, sparse=True))
    grid[axis] = indices
    return _scatter(data, tuple(grid), updates, mode)


@implementation("scatter_nd")
def scatter_nd(data, indices, updates, mode="add", **_):
    indices = _int(indices)
    return _scatter(data, tuple(np.moveaxis(indices, -1, 0)), updates, mode)


@implementation("gather_nd")
def gather_nd(x, indices, batch_dims=0, **_):
    """out[b..., i...] = x[b..., *indices[b..., i..., :]] over the leading `batch_dims` dims."""
    indices, batch_dims = _int(indices), int(scalar(batch_dims))
    if batch_dims == 0:
        return x[tuple(np.moveaxis(indices, -1, 0))]
    batch_shape = x.shape[:batch_dims]
    xs = x.reshape((-1,) + x.shape[batch_dims:])
    ids = indices.reshape((-1,) + indices.shape[batch_dims:])
    out = np.stack([a[tuple(np.moveaxis(i, -1, 0))] for a, i in zip(xs, ids)])
    return out.reshape(batch_shape + out.shape[1:])


@implementation("one_hot")
def one_hot(indices, one_hot_vector_size, axis=-1, on_value=1, off_value=0, **_):
    indices = _int(indices)
    axis = int(scalar(axis)) % (indices.ndim + 1)
    hot = np.expand_dims(indices, axis) == np.arange(int(scalar(one_hot_vector_size))).reshape(
        (-1,) + (1,) * (indices.ndim - axis)
    )
    return np.where(hot, np.asarray(on_value), np.asarray(off_value))


@implementation("non_zero")
def non_zero(x, **_):
    return np.transpose(np.nonzero(x)).astype(np.int32)


def _order(x, axis, ascending):
    """Indices sorting x along axis; ties keep index order (stable), as value_inference's numpy sort does."""
    v = accumulate(x)
    return np.argsort(v if bool(scalar(ascending)) else -v, axis=axis, kind="stable")


@implementation("argsort")
def argsort(x, axis=-1, ascending=False, **_):
    return _order(x, int(scalar(axis)), ascending).astype(np.int32)


@implementation("topk")
def topk(x, k=1, axis=-1, ascending=False, sort=True, return_indices=True, output_indices_dtype="int32", **_):
    """`sort=False` may return the k values in any order; sorted is one such order."""
    axis, k = int(scalar(axis)), int(scalar(k))
    k = x.shape[axis] if k == -1 else k
    indices = np.take(_order(x, axis, ascending), np.arange(k), axis=axis)
    values = np.take_along_axis(x, indices, axis=axis)
    if not bool(scalar(return_indices)):
        return values
    return values, indices.astype(numpy_dtype(output_indices_dtype))


@implementation("cumsum")
def cumsum(x, axis=0, exclusive=False, reverse=False, **_):
    axis = int(scalar(axis))
    v = accumulate(x)
    if bool(scalar(reverse)):
        v = np.flip(v, axis)
    out = np.cumsum(v, axis=axis)
    if bool(scalar(exclusive)):
        out = out - v
    return np.flip(out, axis) if bool(scalar(reverse)) else out


@implementation("reverse")
def reverse(x, axes=None, **_):
    return np.flip(x, None if axes is None else tuple(int(a) for a in np.asarray(axes).reshape(-1)))


@implementation("reverse_sequence")
def reverse_sequence(x, lengths, seq_axis=0, batch_axis=0, **_):
    """For each batch entry b, the first lengths[b] elements along seq_axis reversed; the rest unchanged."""
    seq_axis, batch_axis = int(scalar(seq_axis)) % x.ndim, int(scalar(batch_axis)) % x.ndim
    out = np.array(x, copy=True)
    for b, n in enumerate(_int(lengths).reshape(-1)):
        index = [slice(None)] * x.ndim
        index[batch_axis] = b
        index[seq_axis] = slice(0, int(n))
        out[tuple(index)] = np.flip(x[tuple(index)], seq_axis - (batch_axis < seq_axis))
    return out
