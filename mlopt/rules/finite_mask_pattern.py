"""The matcher of the finite_mask rule: which constants are attention-mask sentinels that fp16 cannot hold, and
which clip/maximum/minimum bounds are infinite.

A sentinel is a mask value that fp16 arithmetic turns into -inf or NaN: -inf itself, or any value below the
rule's finite fill (float32's minimum -3.4e38 and -1e9 become -inf when they are cast to fp16; -65504 is finite
but overflows to -inf once a score below -16 is added to it in fp16). Every constant is read through
`graph.const_chunks`, a bounded window at a time, so a large stored mask is checked without being held whole.
"""

import numpy as np

FP16_MAX = 65504.0  # the largest finite fp16 value (IEEE 754 binary16: (2 - 2**-10) * 2**15)
CAST_AND_SHAPE = ("cast",)  # ops the mask may pass through between its constant and the add (values unchanged)


def const_through_casts(graph, value):
    """(the const op defining `value` through casts, the casts walked) or (None, casts) when a non-cast op
    (or a function input) computes it."""
    casts, seen = [], set()
    while value is not None and value not in seen:
        seen.add(value)
        op = graph.producer(value)
        if op is None:
            return None, casts
        kind = graph.op_type(op)
        if kind == "const":
            return op, casts
        if kind not in CAST_AND_SHAPE:
            return None, casts
        casts.append(op)
        value = graph.arg(op, "x")
    return None, casts


def scan(graph, value, fill, window=1 << 16):
    """What a constant holds, read `window` elements at a time: {"sentinels": count of values that are -inf or
    below `fill`, "nan": count, "pos_inf": count}, or None if it cannot be read."""
    chunks = graph.const_chunks(value, window)
    if chunks is None:
        return None
    found = {"sentinels": 0, "nan": 0, "pos_inf": 0}
    for chunk in chunks:
        chunk = np.asarray(chunk, np.float64)
        found["nan"] += int(np.isnan(chunk).sum())
        found["pos_inf"] += int(np.isposinf(chunk).sum())
        found["sentinels"] += int((chunk < fill).sum())  # -inf < fill too
    return found


def finite_sentinels(mask, fill):
    """`mask` with every sentinel (-inf, or below `fill`) replaced by `fill`."""
    mask = np.asarray(mask, np.float64)
    return np.where(mask < fill, fill, mask)


def infinite_bound(value):
    """+-FP16_MAX for a scalar bound that is +-inf or beyond fp16's range (it becomes +-inf in fp16), else None."""
    if value is None or np.size(value) != 1:
        return None
    v = float(np.asarray(value, np.float64).reshape(()))
    if np.isnan(v) or abs(v) <= FP16_MAX:
        return None
    return FP16_MAX if v > 0 else -FP16_MAX
