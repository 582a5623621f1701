"""What split_wide matches, and how it cuts a width into chunks.

An op computing many independent dot products over one constant weight, with more than MAX_CHANNELS outputs:
a `linear` (weight (C, D): rows), a `matmul` with a constant rank-2 operand (y (D, C) or, transposed, (C, D);
or a constant x (C, D) on the left, its output's channels on axis -2), or a `conv` with a 1x1 kernel, strides 1,
no padding and one group (weight (C, D, 1, 1): a linear over the channel axis 1). The weight is a plain constant
(stored in weight.bin or immediate). The chunking is balanced: k = ceil(C / MAX_CHANNELS) chunks whose sizes differ by at most one,
the larger ones first (32000 -> 16000 + 16000; 50257 -> 12565 + 3 x 12564). Balanced chunks keep
every piece as far under the limit as k pieces allow; a size rounded to a multiple of some hardware tile is
not used because no public source states such a tile for the Neural Engine. A compressed weight that can only be
cut every n rows (a LUT per group of 16 or 32 rows, as coremltools' grouped-channel palettization writes; per-block
scales; 4-bit indices of an odd number of columns) is chunked in units of n rows, balanced the same way, with more
chunks if the units do not fit (151936 rows in groups of 16: 10 chunks of 15200 or 15184).

Forms it recognises and leaves alone, with the reason the report prints:
- a weight decompressed by a `constexpr_*` op other than those rewrites/compressed_slicing.py splits in their
  compressed form (sparse, constexpr_cast): expanding it would undo the compression. The forms it does split may
  still fail to split exactly at the chunk boundaries (4-bit indices not on a byte, per-block scales crossing a
  chunk): the builder says why, and the chain is left alone with that reason;
- a weight or bias that is not a constant, or a weight of unknown shape.
"""

import math

import numpy as np

from ..graph.dtypes import NUMPY
from ..patterns.status import NOT_THIS_PATTERN
from ..rewrites.compressed_slicing import SLICERS, row_alignment
from ..patterns.trace import attempt
from .base import Match

# The largest tensor dimension reported to stay on the Neural Engine (docs/lint.md, `dim-over-16384`, has the
# public sources: ANEMLL's llama_model.py, smpanaro's more-ane-transformers notes, ncdrone/rustane#13). It is
# a community measurement, not an Apple specification.
MAX_CHANNELS = 16384

COMPRESSED = ("constexpr_lut_to_dense", "constexpr_affine_dequantize", "constexpr_blockwise_shift_scale",
              "constexpr_sparse_to_dense", "constexpr_cast")


def chunk_bounds(total, chunks, align=1):
    """[(begin, end)] of `chunks` balanced pieces of `total`, each boundary a multiple of `align` (a compressed
    weight's block of rows, `row_alignment`; `total` is one): sizes differ by at most `align`, larger first."""
    size, extra = divmod(total // align, chunks)
    bounds, begin = [], 0
    for i in range(chunks):
        end = begin + (size + (1 if i < extra else 0)) * align
        bounds.append((begin, end))
        begin = end
    return bounds


def chunk_count(total, limit=MAX_CHANNELS, align=1):
    """The fewest balanced chunks of at most `limit` whose boundaries are multiples of `align`: ceil(total / limit)
    when align is 1; None when `align` itself exceeds `limit`."""
    if align > limit:
        return None
    units = total // align
    chunks = math.ceil(total / limit)
    while math.ceil(units / chunks) * align > limit:
        chunks += 1
    return chunks


def _producer_type(graph, value):
    op = graph.producer(value) if value is not None else None
    return None if op is None else graph.op_type(op)


def _flag(graph, op, param):
    value = graph.const(op, param) if graph.has_input(op, param) else None
    return bool(np.asarray(value).item()) if value is not None else False


# how each op type reads a wide weight: form code (a param of the match: the conversion-time fused op carries it)
LINEAR, MATMUL_Y, MATMUL_X, CONV = 0, 1, 2, 3


def _wide_operand(graph, op):
    """(form, x, weight, bias, weight channel axis) of a linear, matmul or conv, or None if it is none of them."""
    kind = graph.op_type(op)
    if kind == "linear":
        return LINEAR, graph.arg(op, "x"), graph.arg(op, "weight"), graph.arg(op, "bias"), 0
    if kind == "conv":
        return CONV, graph.arg(op, "x"), graph.arg(op, "weight"), graph.arg(op, "bias"), 0
    if kind == "matmul":
        x, y = graph.arg(op, "x"), graph.arg(op, "y")
        if y is not None and _producer_type(graph, y) in ("const", *COMPRESSED) and graph.rank(y) == 2:
            return MATMUL_Y, x, y, None, 0 if _flag(graph, op, "transpose_y") else 1
        if x is not None and _producer_type(graph, x) in ("const", *COMPRESSED) and graph.rank(x) == 2:
            return MATMUL_X, y, x, None, 1 if _flag(graph, op, "transpose_x") else 0
    return None


def _conv_condition(graph, op, weight):
    """Why a conv is not a 1x1, stride-1, unpadded, single-group one (a linear over channels), or None."""
    kernel = [graph.dim(weight, i) for i in range(2, graph.rank(weight))]
    if any(k != 1 for k in kernel):
        return f"its kernel is {'x'.join(map(str, kernel))}, not 1x1"
    groups = graph.const(op, "groups") if graph.has_input(op, "groups") else None
    if groups is not None and int(np.asarray(groups).item()) != 1:
        return f"it has {int(np.asarray(groups).item())} groups"
    strides = graph.const(op, "strides") if graph.has_input(op, "strides") else None
    if strides is not None and np.any(np.asarray(strides) != 1):
        return "its strides are not 1"
    pad_type = graph.const(op, "pad_type") if graph.has_input(op, "pad_type") else None
    pad = graph.const(op, "pad") if graph.has_input(op, "pad") else None
    if pad_type is not None and str(np.asarray(pad_type).item()) == "custom" and pad is not None and np.any(np.asarray(pad) != 0):
        return "it pads its input"
    return None


def match_wide(graph, op, title):
    """The match for a linear, a matmul with a constant operand or a 1x1 conv with more than MAX_CHANNELS
    output channels, or a status saying why not."""
    found = _wide_operand(graph, op)
    if found is None:
        return NOT_THIS_PATTERN
    form, x, weight, bias, axis = found
    if x is None or weight is None or (form == CONV and graph.rank(weight) < 3):
        return NOT_THIS_PATTERN
    out = graph.dim(weight, axis)
    if out is None or out <= MAX_CHANNELS:
        return NOT_THIS_PATTERN  # not wide: nothing to say about it

    def body(trace):
        trace.take(op)
        kind = _producer_type(graph, weight)
        if kind in COMPRESSED and kind not in SLICERS:
            trace.recognise(f"compressed {title}", f"its weight is decompressed by {kind}, which mlopt does not split "
                            "in its compressed form, and expanding it would undo the compression")
        if kind not in ("const", *SLICERS):
            trace.fail("its weight is not a constant")
        if kind in SLICERS:  # the chunks get constexpr ops of their own: the original's goes when nothing else reads it
            trace.take(graph.producer(weight))
        if bias is not None and _producer_type(graph, bias) != "const":
            trace.fail("its bias is not a constant")
        if form == CONV:
            why = _conv_condition(graph, op, weight)
            if why:
                trace.fail(why)
        align = _alignment(graph, weight, axis, out)
        if chunk_count(out, align=align) is None:
            trace.fail(f"its compressed weight can be cut only every {align} rows, more than {MAX_CHANNELS}")
        out_rank = graph.rank(graph.output(op))
        concat_axis = {LINEAR: out_rank - 1, MATMUL_Y: out_rank - 1, MATMUL_X: out_rank - 2, CONV: 1}[form]
        readers = [use for use in graph.consumers(weight)
                   if use.op is not None and graph.op_name(use.op) != graph.op_name(op)]
        params = {"chunks": chunk_count(out, align=align), "align": align, "form": form, "weight_axis": axis, "concat_axis": concat_axis,
                  "transpose_x": int(_flag(graph, op, "transpose_x")), "transpose_y": int(_flag(graph, op, "transpose_y"))}
        return Match(x=x, axes=(concat_axis,), output=graph.output(op), output_op=op, ops=trace.op_names(),
                     dtype=graph.dtype(x), operands={"weight": weight, "bias": bias}, params=params,
                     facts={"channels": out}, note=_shared_note(graph, weight, readers))

    return attempt(graph, body)


def _alignment(graph, weight, axis, rows):
    """The row multiple chunk boundaries keep so a compressed weight splits in its compressed form (a grouped
    palette's LUT, per-block scales, sub-byte indices: rewrites/compressed_slicing.row_alignment); 1 for a plain
    weight, or when the rows are no multiple of it (the last chunk could not end on it: the builder says why)."""
    producer = graph.producer(weight)
    if producer is None or graph.op_type(producer) not in SLICERS or not hasattr(producer, "DESCRIPTOR"):  # a saved spec's op; conversion time has no compressed weights
        return 1
    dims = [graph.dim(weight, i) for i in range(graph.rank(weight))]
    align = row_alignment(producer, dims, axis)
    return align if rows % align == 0 else 1


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
