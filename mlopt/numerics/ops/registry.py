"""The op-type -> implementation table and the helpers every op module shares."""

from contextlib import contextmanager

import numpy as np

from ...graph.dtypes import FROM_CAST_NAME, NUMPY

IMPLEMENTATIONS = {}


def implementation(*op_types):
    def register(fn):
        for t in op_types:
            IMPLEMENTATIONS[t] = fn
        return fn

    return register


ACCUMULATOR = [np.float32]  # what fp16 reductions, norms and products accumulate in (verify --accumulate)
ACCUMULATE = {"fp32": np.float32, "fp16": np.float16}  # the --accumulate choices of verify and audit


def accumulate(x):
    """fp16 operands of reductions, norms and matrix products are accumulated in fp32, as hardware does (docs/numerics.md,
    "The accumulation model"); under `accumulating(np.float16)`, the pessimistic model, they stay fp16."""
    x = np.asarray(x)
    return x.astype(ACCUMULATOR[0]) if x.dtype == np.float16 else x


def mean(v, axis=None, keepdims=False):
    """np.mean that accumulates in v's own dtype: numpy sums fp16 in fp32 unless told (its documented default)."""
    return np.mean(v, axis=axis, keepdims=keepdims, dtype=np.float16 if v.dtype == np.float16 else None)


@contextmanager
def accumulating(dtype):
    """Evaluate with fp16 operands accumulated in `dtype` (np.float32: hardware; np.float16: pessimistic)."""
    previous, ACCUMULATOR[0] = ACCUMULATOR[0], dtype
    try:
        yield
    finally:
        ACCUMULATOR[0] = previous


def scalar(v):
    """The single element of a scalar input, as a Python value (str for strings)."""
    if v is None:
        return None
    item = np.asarray(v).reshape(-1)[0]
    return item.item() if hasattr(item, "item") else item


def axes_tuple(axes, rank):
    if axes is None:
        return None
    return tuple(int(a) % rank if rank else 0 for a in np.asarray(axes).reshape(-1))


def numpy_dtype(name):
    """The numpy dtype of a MIL dtype name ("fp16", "int32", "int8", ...) as cast, make_list and quantize take."""
    name = scalar(name)
    target = NUMPY.get(FROM_CAST_NAME.get(name)) or {"int8": np.int8, "uint8": np.uint8, "int16": np.int16, "uint16": np.uint16}.get(name)
    if target is None:
        raise ValueError(f"unsupported dtype {name!r}")
    return target
