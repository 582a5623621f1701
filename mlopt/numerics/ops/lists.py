"""Tensor-list ops (make_list, list_read/write/gather/scatter/length), as while_loop bodies of converted
TensorFlow/PyTorch loops use them. A list value is a Python list of arrays; every op returns a new list (values
are immutable: a loop's earlier state must not change when a later iteration writes)."""

import numpy as np

from .registry import implementation, numpy_dtype, scalar


@implementation("make_list")
def make_list(elem_shape=None, dtype="fp32", init_length=1, dynamic_length=True, **_):
    shape = [] if elem_shape is None else [int(s) for s in np.asarray(elem_shape).reshape(-1)]
    return [np.zeros(shape, numpy_dtype(dtype)) for _ in range(int(scalar(init_length)))]


def _written(ls, positions, values):
    """ls with values at positions; writing past the end grows it with zeros (MIL leaves unwritten ones undefined)."""
    out = list(ls)
    for i, v in zip(positions, values):
        i = int(i)
        if i < 0:
            i += len(out)
        if i >= len(out):
            filler = np.zeros_like(np.asarray(v))
            out += [filler] * (i + 1 - len(out))
        out[i] = np.asarray(v)
    return out


@implementation("list_write")
def list_write(ls, index, value, **_):
    return _written(ls, [scalar(index)], [value])


@implementation("list_scatter")
def list_scatter(ls, indices, value, **_):
    return _written(ls, np.asarray(indices).reshape(-1), list(np.asarray(value)))


@implementation("list_read")
def list_read(ls, index, **_):
    return ls[int(scalar(index))]


@implementation("list_gather")
def list_gather(ls, indices, **_):
    return np.stack([ls[int(i)] for i in np.asarray(indices).reshape(-1)])


@implementation("list_length")
def list_length(ls, **_):
    return np.int32(len(ls))
