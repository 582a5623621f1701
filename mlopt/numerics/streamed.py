"""A linear over a large stored weight, computed a block of output rows at a time.

An LM head's weight (32000 x 2048 fp16: 131 MB in weight.bin) read whole and widened - to fp32 for the
accumulation model, to float64 for an exact run - would take 2 to 4 times its stored size in memory, in the
proofs and in `verify`. Every output channel of a linear is its own dot product, so the interpreter reads the
weight `STREAM_ELEMENTS` at a time through the weight reader's window and fills the output's last axis block by
block: the same arithmetic per element, memory bounded whatever the weight's size.
"""

import math

import numpy as np

STREAM_ELEMENTS = 1 << 20  # a stored linear weight larger than this is streamed, this many elements at a time


def streamed_linear(linear, x, bias, rows, cols, read_rows):
    """`linear(x, W, bias)` with W (rows, cols) read by `read_rows(begin, count)` -> the (count, cols) block in the
    compute dtype. `linear` is the interpreter's own implementation, applied to each block."""
    step = max(1, STREAM_ELEMENTS // max(cols, 1))
    out = None
    for begin in range(0, rows, step):
        count = min(step, rows - begin)
        part = linear(x=x, weight=read_rows(begin, count), bias=None if bias is None else bias[begin:begin + count])
        if out is None:
            out = np.empty((*part.shape[:-1], rows), part.dtype)
        out[..., begin:begin + count] = part
    return out


def streams(shape, dtype_known):
    """Whether a stored weight of `shape` is streamed rather than read whole."""
    return dtype_known and len(shape) == 2 and None not in shape and math.prod(shape) > STREAM_ELEMENTS
