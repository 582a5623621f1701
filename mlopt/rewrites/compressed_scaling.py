"""How a weight a constexpr op decompresses is scaled by a factor without decompressing it.

Every decompression below is linear in one of its stored parameters, so the weight times a factor is the same op
with that one parameter times the factor (the data, indices and masks stay as they are):

- constexpr_affine_dequantize (iOS16/17): (quantized_data - zero_point) * scale -> `scale`;
- constexpr_blockwise_shift_scale (iOS18): (data - offset) * scale -> `scale`;
- constexpr_lut_to_dense (iOS16/18): lut[indices] -> `lut` (the palette);
- constexpr_sparse_to_dense (iOS16/18): the nonzero values placed by a mask -> `nonzero_data`;
- constexpr_cast (iOS17): a cast of `source_val` -> `source_val`.

A power of two keeps every scaled value exact unless it leaves the parameter dtype's normal range (counted by
the rule that scales: rules/fp16_headroom.py).
"""

SCALED_PARAM = {
    "constexpr_affine_dequantize": "scale",
    "constexpr_blockwise_shift_scale": "scale",
    "constexpr_lut_to_dense": "lut",
    "constexpr_sparse_to_dense": "nonzero_data",
    "constexpr_cast": "source_val",
}


def held_param(op, name):
    """The `Value` an op holds for parameter `name` (an attribute or an input bound to a value), or None."""
    if name in op.attributes:
        return op.attributes[name]
    if name in op.inputs and len(op.inputs[name].arguments) == 1:
        binding = op.inputs[name].arguments[0]
        if binding.WhichOneof("binding") == "value":
            return binding.value
    return None
