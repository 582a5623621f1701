"""Shape and indexing ops: concat, split, slices (and slice_update), reshape, transpose, gather, tile, fill, range,
band_part."""

import numpy as np

from .registry import axes_tuple, implementation, scalar


@implementation("concat")
def concat(values, axis, interleave=False, **_):
    axis = int(scalar(axis))
    if all(np.ndim(v) == 0 for v in values):  # scalars concatenate into a vector (shape arithmetic: gather -> concat)
        values = [np.reshape(v, 1) for v in values]
    if bool(scalar(interleave)):
        stacked = np.stack(values, axis=axis + 1 if axis >= 0 else axis)
        shape = list(values[0].shape)
        shape[axis] = sum(v.shape[axis] for v in values)
        return stacked.reshape(shape)
    return np.concatenate(values, axis=axis)


@implementation("split")
def split(x, axis, num_splits=None, split_sizes=None, **_):
    axis = int(scalar(axis))
    if split_sizes is not None:
        bounds = np.cumsum(np.asarray(split_sizes).reshape(-1))[:-1]
        return tuple(np.split(x, bounds, axis=axis))
    return tuple(np.split(x, int(scalar(num_splits)), axis=axis))


@implementation("slice_by_index")
def slice_by_index(x, begin, end, stride=None, begin_mask=None, end_mask=None, squeeze_mask=None, **_):
    return x[slice_index(x, begin, end, stride, begin_mask, end_mask, squeeze_mask)]


@implementation("slice_update")
def slice_update(x, update, begin, end, stride=None, begin_mask=None, end_mask=None, squeeze_mask=None, **_):
    """x with the slice slice_by_index would read replaced by `update` (a copy: values are immutable)."""
    out = np.array(x, copy=True)
    index = slice_index(x, begin, end, stride, begin_mask, end_mask, squeeze_mask)
    out[index] = np.reshape(update, out[index].shape)
    return out


def slice_index(x, begin, end, stride=None, begin_mask=None, end_mask=None, squeeze_mask=None):
    """The numpy index of MIL's strided slice (shared by slice_by_index and slice_update)."""
    rank = x.ndim
    stride = np.ones(rank, int) if stride is None else np.asarray(stride).reshape(-1)
    begin_mask = np.zeros(rank, bool) if begin_mask is None else np.asarray(begin_mask).reshape(-1)
    end_mask = np.zeros(rank, bool) if end_mask is None else np.asarray(end_mask).reshape(-1)
    squeeze_mask = np.zeros(rank, bool) if squeeze_mask is None else np.asarray(squeeze_mask).reshape(-1)
    begin, end = np.asarray(begin).reshape(-1), np.asarray(end).reshape(-1)
    index = []
    for i in range(rank):
        if squeeze_mask[i]:
            index.append(int(begin[i]))
            continue
        b = None if begin_mask[i] else int(begin[i])
        e = None if end_mask[i] else int(end[i])
        index.append(slice(b, e, int(stride[i])))
    return tuple(index)


@implementation("slice_by_size")
def slice_by_size(x, begin, size, **_):
    begin, size = np.asarray(begin).reshape(-1), np.asarray(size).reshape(-1)
    index = tuple(slice(int(b), None if int(s) == -1 else int(b) + int(s)) for b, s in zip(begin, size))
    return x[index]


@implementation("reshape")
def reshape(x, shape, **_):
    """A 0 copies the matching dimension of x, counted from the right (iOS17 rule; same as iOS15's at equal rank)."""
    shape = [int(s) for s in np.asarray(shape).reshape(-1)]
    n, rank = len(shape), x.ndim
    for i, s in enumerate(shape):
        if s == 0:
            j = rank - (n - i)
            shape[i] = x.shape[j] if 0 <= j < rank else 1
    return x.reshape(shape)


@implementation("transpose")
def transpose(x, perm, **_):
    return np.transpose(x, [int(p) for p in np.asarray(perm).reshape(-1)])


@implementation("expand_dims")
def expand_dims(x, axes, **_):
    axes = sorted(int(a) % (x.ndim + len(np.asarray(axes).reshape(-1))) for a in np.asarray(axes).reshape(-1))
    for a in axes:
        x = np.expand_dims(x, a)
    return x


@implementation("squeeze")
def squeeze(x, axes=None, **_):
    if axes is None:
        return np.squeeze(x)
    return np.squeeze(x, axis=axes_tuple(axes, x.ndim))


@implementation("tile")
def tile(x, reps, **_):
    return np.tile(x, [int(r) for r in np.asarray(reps).reshape(-1)])


@implementation("gather")
def gather(x, indices, axis=0, batch_dims=0, validate_indices=False, **_):
    axis, batch_dims = int(scalar(axis)) % x.ndim, int(scalar(batch_dims))
    indices = np.asarray(indices).astype(np.int64)
    indices = np.where(indices < 0, indices + x.shape[axis], indices)
    if batch_dims == 0:
        return np.take(x, indices, axis=axis)
    # batched: gather independently over the leading batch_dims dimensions
    batch_shape = x.shape[:batch_dims]
    xs = x.reshape((-1,) + x.shape[batch_dims:])
    ids = indices.reshape((-1,) + indices.shape[batch_dims:])
    out = np.stack([np.take(a, i, axis=axis - batch_dims) for a, i in zip(xs, ids)])
    return out.reshape(batch_shape + out.shape[1:])


@implementation("gather_along_axis")
def gather_along_axis(x, indices, axis=0, **_):
    indices = np.asarray(indices).astype(np.int64)
    axis = int(scalar(axis)) % x.ndim
    indices = np.where(indices < 0, indices + x.shape[axis], indices)
    return np.take_along_axis(x, indices, axis=axis)


@implementation("fill")
def fill(shape, value=0.0, **_):
    return np.full([int(s) for s in np.asarray(shape).reshape(-1)], value)


@implementation("range_1d")
def range_1d(end, start, step, **_):
    return np.arange(scalar(start), scalar(end), scalar(step))


@implementation("band_part")
def band_part(x, lower=-1, upper=-1, **_):
    lower, upper = int(scalar(lower)), int(scalar(upper))
    m, n = x.shape[-2:]
    i, j = np.arange(m)[:, None], np.arange(n)[None, :]
    keep = ((lower < 0) | (i - j <= lower)) & ((upper < 0) | (j - i <= upper))
    return np.where(keep, x, np.zeros((), x.dtype))


@implementation("shape")
def shape(x, **_):
    return np.asarray(x.shape, np.int32)
