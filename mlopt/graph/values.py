"""Decode the literal values a MIL program carries inline (`const` ops with an `immediateValue`, inline bindings).

Blob-file constants (weights in weight.bin) are not decoded here: the graph view only needs small literals
(exponents, epsilons, axes, flags) to recognise patterns, and must never touch the weight file.
"""

import numpy as np

from .dtypes import FLOAT16, NUMPY, STRING


def tensor_shape(value_type):
    """Static shape of a tensor ValueType, or None if some dimension is unknown."""
    dims = value_type.tensorType.dimensions
    if any(d.WhichOneof("dimension") != "constant" for d in dims):
        return None
    return tuple(int(d.constant.size) for d in dims)


def decode_value(value):
    """numpy array for an immediate tensor `Value`, or None (blob file values, lists, dictionaries)."""
    if value.WhichOneof("value") != "immediateValue" or value.immediateValue.WhichOneof("value") != "tensor":
        return None
    ttype = value.type.tensorType
    tensor = value.immediateValue.tensor
    kind = tensor.WhichOneof("value")
    if ttype.dataType == STRING:
        array = np.array(list(tensor.strings.values), dtype=object)
    elif kind == "bytes":
        np_dtype = NUMPY.get(ttype.dataType)
        if np_dtype is None:
            return None
        array = np.frombuffer(tensor.bytes.values, dtype=np_dtype)
    elif kind in ("floats", "ints", "bools", "doubles", "longInts"):
        np_dtype = NUMPY.get(ttype.dataType, np.float64 if ttype.dataType != FLOAT16 else np.float16)
        array = np.array(list(getattr(tensor, kind).values)).astype(np_dtype)
    else:
        return None
    shape = tensor_shape(value.type)
    if shape is None:
        return None
    if array.size != int(np.prod(shape, dtype=np.int64)):
        return None
    return array.reshape(shape)
