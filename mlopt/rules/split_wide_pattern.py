"""What split_wide matches, and how it cuts a width into chunks.

A `linear` whose weight is a plain constant (stored in weight.bin or immediate) with more than MAX_CHANNELS
output channels. The chunking is balanced: k = ceil(C / MAX_CHANNELS) chunks whose sizes differ by at most one,
the larger ones first (32000 -> 16000 + 16000; 50257 -> 12565 + 3 x 12564). Balanced chunks keep
every piece as far under the limit as k pieces allow; a size rounded to a multiple of some hardware tile is
not used because no public source states such a tile for the Neural Engine.

Forms it recognises and leaves alone, with the reason the report prints:
- a weight computed by a `constexpr_*` op (palettized, int8, sparse): splitting those in their compressed form
  needs a builder method per constexpr op, which the builder contract does not have yet, and expanding them
  would undo the compression;
- a weight or bias that is not a constant, or a weight of unknown shape.
"""

import math

import numpy as np

from ..graph.dtypes import NUMPY
from ..patterns.status import NOT_THIS_PATTERN
from ..patterns.trace import attempt
from .base import Match

# The largest tensor dimension reported to stay on the Neural Engine (docs/lint.md, `dim-over-16384`, has the
# public sources: ANEMLL's llama_model.py, smpanaro's more-ane-transformers notes, ncdrone/rustane#13). It is
# a community measurement, not an Apple specification.
MAX_CHANNELS = 16384

COMPRESSED = ("constexpr_lut_to_dense", "constexpr_affine_dequantize", "constexpr_blockwise_shift_scale",
              "constexpr_sparse_to_dense", "constexpr_cast")


def chunk_bounds(total, chunks):
    """[(begin, end)] of `chunks` balanced pieces of `total`: sizes differ by at most one, larger first."""
    size, extra = divmod(total, chunks)
    bounds, begin = [], 0
    for i in range(chunks):
        end = begin + size + (1 if i < extra else 0)
        bounds.append((begin, end))
        begin = end
    return bounds


def chunk_count(total, limit=MAX_CHANNELS):
    """k = ceil(total / limit): the fewest chunks of at most `limit`."""
    return math.ceil(total / limit)


def _producer_type(graph, value):
    op = graph.producer(value) if value is not None else None
    return None if op is None else graph.op_type(op)


def match_wide_linear(graph, op, title):
    """The match for a `linear` wider than MAX_CHANNELS, or a status saying why not."""
    x, weight, bias = graph.arg(op, "x"), graph.arg(op, "weight"), graph.arg(op, "bias")
    if x is None or weight is None or graph.rank(weight) != 2:
        return NOT_THIS_PATTERN
    out = graph.dim(weight, 0)
    if out is None or out <= MAX_CHANNELS:
        return NOT_THIS_PATTERN  # not wide: nothing to say about it

    def body(trace):
        trace.take(op)
        kind = _producer_type(graph, weight)
        if kind in COMPRESSED:
            trace.recognise(f"compressed {title}", f"its weight is decompressed by {kind}; splitting a compressed "
                            "weight in its compressed form is not supported yet, and expanding it would undo the "
                            "compression")
        if kind != "const":
            trace.fail("its weight is not a constant")
        if bias is not None and _producer_type(graph, bias) != "const":
            trace.fail("its bias is not a constant")
        if graph.dim(weight, 1) is None:
            trace.fail("its weight's input size is unknown")
        chunks = chunk_count(out)
        readers = [use for use in graph.consumers(weight)
                   if use.op is not None and graph.op_name(use.op) != graph.op_name(op)]
        return Match(x=x, axes=(graph.rank(x) - 1,), output=graph.output(op), output_op=op, ops=trace.op_names(),
                     dtype=graph.dtype(x), operands={"weight": weight, "bias": bias}, params={"chunks": chunks},
                     facts={"channels": out, "other_readers": sorted({graph.op_type(u.op) for u in readers})},
                     note=_shared_note(graph, weight, readers))

    return attempt(graph, body)


def _shared_note(graph, weight, readers):
    """What a split costs when another op (a tied embedding's gather) still reads the whole weight."""
    if not readers:
        return None
    dims = [graph.dim(weight, i) for i in range(graph.rank(weight))]
    np_dtype = NUMPY.get(graph.dtype(weight))
    added = math.prod(dims) * np.dtype(np_dtype).itemsize if np_dtype is not None and None not in dims else None
    kinds = ", ".join(sorted({graph.op_type(u.op) for u in readers}))
    size = f"{added} bytes" if added is not None else "a copy of the weight"
    return (f"the weight is also read by {kinds} (tied embeddings): it stays for that reader and the split "
            f"chunks add {size}")
