"""How a weight a constexpr op decompresses is cut into row ranges without decompressing it.

Each constexpr op's stored parameters are either laid out like the weight (sliced along the same axis: int8
data, palette indices), shared by every row (kept as they are: a per-tensor LUT, a scalar scale), or held per
block of rows (sliced by blocks, only where every chunk boundary falls on a block boundary). `plan` says which
parameter gets which slice, or raises LoweringFailed with the reason a form cannot be split exactly:

- constexpr_affine_dequantize (iOS16/17): quantized_data sliced; scale and zero_point sliced when they run
  along the split axis, kept when scalar or along another axis;
- constexpr_blockwise_shift_scale (iOS18): data sliced; scale and offset sliced by blocks;
- constexpr_lut_to_dense (iOS18): indices sliced (sub-byte indices only where every row range starts and ends on
  a byte: package/weight_writer.py checks); the LUT sliced by blocks, kept when shared. Vector palettization
  (`vector_axis`) and the iOS16 form (indices packed flat, the shape an attribute) are not split;
- constexpr_sparse_to_dense (its nonzero values are counted through a bit mask, so a row range of them starts
  where the mask says) and constexpr_cast are not in SLICERS: the rule leaves them alone.
"""

import math

import numpy as np

from ..graph.dtypes import SUB_BYTE
from ..graph.values import decode_value
from .builder import LoweringFailed


def _param(op, name):
    """("attribute" | "input", Value) of a constexpr op's parameter held in the op, or (None, None) if absent."""
    if name in op.attributes:
        return "attribute", op.attributes[name]
    if name in op.inputs and op.inputs[name].arguments:
        binding = op.inputs[name].arguments[0]
        if binding.WhichOneof("binding") != "value":
            raise LoweringFailed(f"its {op.type} reads '{name}' from another op, not from a value it holds")
        return "input", binding.value
    return None, None


def _dims(value):
    return [int(d.constant.size) if d.WhichOneof("dimension") == "constant" else None
            for d in value.type.tensorType.dimensions]


def _blocked(op, name, axis, rows, begin, end):
    """The slice of a per-block parameter `name` for rows [begin, end) along `axis`, [] when it is shared."""
    where, value = _param(op, name)
    if value is None:
        return []
    dims = _dims(value)
    if axis >= len(dims) or dims[axis] is None:
        raise LoweringFailed(f"its {op.type}'s '{name}' has no size along axis {axis}")
    blocks = dims[axis]
    if blocks == 1:
        return []
    if rows % blocks:
        raise LoweringFailed(f"its {op.type}'s '{name}' has {blocks} blocks along axis {axis} of {rows} rows")
    block = rows // blocks
    if begin % block or end % block:
        at = begin if begin % block else end
        raise LoweringFailed(f"its {op.type}'s '{name}' holds one entry per {block} rows, and a chunk boundary at "
                             f"row {at} falls inside a block")
    return [(where, name, axis, begin // block, end // block)]


def _affine(op, dims, axis, begin, end):
    where, _ = _param(op, "quantized_data")
    plan = [(where, "quantized_data", axis, begin, end)]
    _, held_axis = _param(op, "axis")
    q_axis = int(np.asarray(decode_value(held_axis)).item()) % len(dims) if held_axis is not None else 0
    for name in ("scale", "zero_point"):
        where, value = _param(op, name)
        if value is None or len(_dims(value)) == 0:
            continue
        if len(_dims(value)) != 1:
            raise LoweringFailed(f"its {op.type}'s '{name}' has rank {len(_dims(value))}")
        if q_axis == axis:
            plan.append((where, name, 0, begin, end))
    return plan


def _blockwise(op, dims, axis, begin, end):
    where, _ = _param(op, "data")
    return [(where, "data", axis, begin, end)] + [p for name in ("scale", "offset")
                                                  for p in _blocked(op, name, axis, dims[axis], begin, end)]


def _lut(op, dims, axis, begin, end):
    if "indices" in op.attributes:
        raise LoweringFailed("its iOS16 constexpr_lut_to_dense packs the indices flat, with the shape an attribute")
    if _param(op, "vector_axis")[1] is not None:
        raise LoweringFailed("its constexpr_lut_to_dense is vector-palettized (vector_axis)")
    where, _ = _param(op, "indices")
    return [(where, "indices", axis, begin, end)] + _blocked(op, "lut", axis, dims[axis], begin, end)


SLICERS = {
    "constexpr_affine_dequantize": _affine,
    "constexpr_blockwise_shift_scale": _blockwise,
    "constexpr_lut_to_dense": _lut,
}


BLOCKED = {"constexpr_blockwise_shift_scale": ("scale", "offset"), "constexpr_lut_to_dense": ("lut",)}
PACKED = ("quantized_data", "data", "indices")  # parameters laid out like the weight, possibly bit-packed


def row_alignment(op, weight_dims, axis):
    """The multiple of rows along `axis` at which a chunk boundary cuts `op`'s stored parameters exactly: the
    rows a per-block parameter holds one entry for (a grouped palette's LUT, a per-block scale), and the rows
    whose sub-byte indices or data fill whole bytes. 1 when any boundary does, or when `plan` refuses the form
    whatever the boundaries (it then says why)."""
    if op.type not in SLICERS or None in weight_dims or not 0 <= axis < len(weight_dims):
        return 1
    rows, align = weight_dims[axis], 1
    try:
        for name in BLOCKED.get(op.type, ()):
            value = _param(op, name)[1]
            dims = _dims(value) if value is not None else []
            if axis < len(dims) and dims[axis] and dims[axis] > 1 and rows % dims[axis] == 0:
                align = math.lcm(align, rows // dims[axis])
        for name in PACKED:
            value = _param(op, name)[1]
            if value is not None and value.type.tensorType.dataType in SUB_BYTE:
                bits = SUB_BYTE[value.type.tensorType.dataType][0]
                align = math.lcm(align, 8 // math.gcd(math.prod(weight_dims[axis + 1:]) * bits, 8))
    except LoweringFailed:  # a parameter read from another op: plan refuses it with the reason
        return 1
    return align


def plan(op, weight_dims, axis, begin, end):
    """[(where, parameter, axis, begin, end)]: what to slice in `op` for its output's rows [begin, end) along
    `axis`. Raises LoweringFailed where the compressed form cannot be cut there exactly."""
    if op.type not in SLICERS:
        raise LoweringFailed(f"a weight decompressed by {op.type} is not split")
    if None in weight_dims:
        raise LoweringFailed("its compressed weight has a shape unknown until run time")
    return SLICERS[op.type](op, list(weight_dims), axis, begin, end)
