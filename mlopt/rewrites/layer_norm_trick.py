"""Lower one RMSNorm match to the LayerNorm trick (first shown by the ANEMLL project).

    neg  = mul(x, -1)
    both = concat([x, neg], axis)               # axis = the first reduced axis; mean 0, variance = mean(x^2)
    ln   = layer_norm(both, axes, eps)          # = [x, -x] / sqrt(mean(x^2) + eps), over all reduced axes
    y    = slice_by_index(ln, first half along axis)
    out  = mul(y, gamma)                        # when the chain had a gamma
    [cast(out, original dtype)]                 # only if the chain's output had another dtype

Everything runs in x's dtype (the dtype outside any cast wrapper). The last op takes the chain's output name and
type, so consumers and model outputs see no change. The slice needs a static size only along the normalised axis:
every other axis is taken whole through `end_mask`.
"""

import numpy as np

from ..graph.dtypes import BOOL, CAST_NAMES, INT32, STRING
from ..graph.view import op_name
from .emitter import retyped
from .opset_rules import epsilon_dtype


def first_half(rank, axis, size):
    """slice_by_index `end` and `end_mask` taking the first `size` entries along `axis` and every other axis whole
    (so only the normalised axis needs a static size)."""
    end = np.zeros(rank, np.int32)
    end[axis] = size
    end_mask = np.ones(rank, bool)
    end_mask[axis] = False
    return end, end_mask


def lower_rms_norm(match, view, emitter):
    """The ops replacing `match.output_op`, in order; the last defines `match.output`."""
    x, axis, dtype = match.x, match.axis, match.dtype
    rank, size = view.rank(x), view.dim(x, axis)
    x_type = view.types[x]
    base = f"{match.output}_rmsnorm"
    ops = []

    def const(suffix, array, const_dtype):
        op, name = emitter.const(f"{base}_{suffix}", array, const_dtype)
        ops.append(op)
        return name

    def emit(op_type, inputs, out_type, suffix, output_name=None, name=None):
        op, out = emitter.op(op_type, inputs, out_type, output_name=output_name, name=name, base=f"{base}_{suffix}")
        ops.append(op)
        return out

    neg = emit("mul", {"x": x, "y": const("neg_one", -1.0, dtype)}, x_type, "neg")
    doubled = None if size is None else 2 * size
    both_type = retyped(x_type, axis=axis, size=doubled)
    both = emit(
        "concat",
        {"values": [x, neg], "axis": const("axis", np.int32(axis), INT32), "interleave": const("interleave", False, BOOL)},
        both_type,
        "concat",
    )
    eps_dtype = epsilon_dtype(view.opset, dtype, match.epsilon)
    normed = emit(
        "layer_norm",
        {
            "x": both,
            "axes": const("axes", np.array(match.axes, np.int32), INT32),
            "epsilon": const("epsilon", match.epsilon, eps_dtype),
        },
        both_type,
        "layer_norm",
    )
    end, end_mask = first_half(rank, axis, size)
    final_type = view.types[match.output]
    final_name = match.output if match.gamma is None and final_type.tensorType.dataType == dtype else None
    keep_name = final_name and op_name(match.output_op)
    half = emit(
        "slice_by_index",
        {
            "x": normed,
            "begin": const("begin", np.zeros(rank, np.int32), INT32),
            "end": const("end", end, INT32),
            "end_mask": const("end_mask", end_mask, BOOL),
        },
        retyped(final_type if final_name else x_type),  # the final value keeps its declared type exactly
        "slice",
        output_name=final_name,
        name=keep_name or None,
    )
    out = half
    if match.gamma is not None:
        gamma = match.gamma
        if view.dtype(gamma) != dtype:
            gamma_type = retyped(view.types[gamma], dtype=dtype)
            gamma = emit("cast", {"x": gamma, "dtype": const("gamma_dtype", CAST_NAMES[dtype], STRING)}, gamma_type, "gamma")
        final_name = match.output if final_type.tensorType.dataType == dtype else None
        out = emit(
            "mul",
            {"x": half, "y": gamma},
            retyped(final_type, dtype=dtype),
            "scaled",
            output_name=final_name,
            name=final_name and op_name(match.output_op),
        )
    if final_type.tensorType.dataType != dtype:
        target = CAST_NAMES[final_type.tensorType.dataType]
        emit(
            "cast",
            {"x": out, "dtype": const("out_dtype", target, STRING)},
            final_type,
            "cast",
            output_name=match.output,
            name=op_name(match.output_op),
        )
    return ops

