"""Decode the literal values a MIL program carries inline (`const` ops with an `immediateValue`, inline bindings).

Blob-file constants (weights in weight.bin) are not decoded here: the graph view only needs small literals
(exponents, epsilons, axes, flags) to recognise patterns, and must never touch the weight file.

The declared shape is checked against the payload before anything is built from it: element counts are Python
ints (np.prod over int64 wraps for large declared sizes and could make a mismatch look like a match), and only
the payload the file really holds is ever decoded. A value that does not hold what its type says decodes to None.
"""

import math

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
    if value.type.WhichOneof("type") != "tensorType":
        return None
    ttype = value.type.tensorType
    shape = tensor_shape(value.type)
    if shape is None or len(shape) != ttype.rank:
        return None
    count = math.prod(shape)
    tensor = value.immediateValue.tensor
    kind = tensor.WhichOneof("value")
    if ttype.dataType == STRING:
        if kind != "strings" or len(tensor.strings.values) != count:
            return None
        array = np.array(list(tensor.strings.values), dtype=object)
    elif kind == "bytes":
        np_dtype = NUMPY.get(ttype.dataType)
        if np_dtype is None or len(tensor.bytes.values) != count * np.dtype(np_dtype).itemsize:
            return None
        array = np.frombuffer(tensor.bytes.values, dtype=np_dtype)
    elif kind in ("floats", "ints", "bools", "doubles", "longInts"):
        values = getattr(tensor, kind).values
        if len(values) != count:
            return None
        np_dtype = NUMPY.get(ttype.dataType, np.float64 if ttype.dataType != FLOAT16 else np.float16)
        with np.errstate(all="ignore"):  # a double beyond fp16/fp32 range becomes inf, as the cast would
            array = np.array(list(values)).astype(np_dtype)
    else:
        return None
    return array.reshape(shape)
