"""The op-type -> implementation table and the helpers every op module shares."""

import numpy as np

IMPLEMENTATIONS = {}


def implementation(*op_types):
    def register(fn):
        for t in op_types:
            IMPLEMENTATIONS[t] = fn
        return fn

    return register


def accumulate(x):
    """fp16 operands of reductions, norms and matrix products are accumulated in fp32, as hardware does."""
    x = np.asarray(x)
    return x.astype(np.float32) if x.dtype == np.float16 else x


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
