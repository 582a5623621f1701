"""What makes a MIL ValueType or an immediate value impossible, as one phrase for an error message.

Split from validate.py, which walks the program: these look at one type or one literal at a time. Every check
compares declared sizes as Python ints (exact, never wrapping like int64) and reads only lengths of what the
file holds, so a type declaring 2**248 elements costs nothing to refuse.
"""

import math

from ..package.proto import MIL_pb2
from .dtypes import name as dtype_name

MAX_DIM = 2**31 - 1  # MIL sizes are int32
_DT = MIL_pb2.DataType
KNOWN_DTYPES = frozenset(v for v in _DT.values() if v != _DT.Value("UNUSED_TYPE"))
# bits per element of the dtypes an immediate value may carry as packed `bytes` (coremltools packs sub-byte ones)
BITS = {_DT.Value(k): b for k, b in {
    "BOOL": 8, "FLOAT8E4M3FN": 8, "FLOAT8E5M2": 8, "FLOAT16": 16, "BFLOAT16": 16, "FLOAT32": 32, "FLOAT64": 64,
    "INT4": 4, "INT8": 8, "INT16": 16, "INT32": 32, "INT64": 64, "UINT1": 1, "UINT2": 2, "UINT3": 3, "UINT4": 4,
    "UINT6": 6, "UINT8": 8, "UINT16": 16, "UINT32": 32, "UINT64": 64,
}.items()}


def type_problem(value_type):
    """What is wrong with a ValueType, or None. Nested list/tuple/dictionary/state types are checked when set."""
    kind = value_type.WhichOneof("type")
    if kind is None:
        return "has no type"
    if kind == "tensorType":
        return tensor_type_problem(value_type.tensorType)
    if kind == "stateType":
        wrapped = value_type.stateType.wrappedType
        if wrapped.WhichOneof("type") != "tensorType":
            return "state type does not wrap a tensor"
        return tensor_type_problem(wrapped.tensorType)
    if kind == "listType":
        length = value_type.listType.length
        if length.WhichOneof("dimension") == "constant" and not 0 <= length.constant.size <= MAX_DIM:
            return f"list length {length.constant.size}, outside 0 .. {MAX_DIM}"
        nested = [value_type.listType.type]
    elif kind == "tupleType":
        nested = list(value_type.tupleType.types)
    else:  # dictionaryType
        nested = [value_type.dictionaryType.keyType, value_type.dictionaryType.valueType]
    for inner in nested:
        if inner.WhichOneof("type") is not None:
            problem = type_problem(inner)
            if problem:
                return problem
    return None


def tensor_type_problem(tensor_type):
    if tensor_type.dataType not in KNOWN_DTYPES:
        return f"unknown data type {tensor_type.dataType}"
    if tensor_type.rank != len(tensor_type.dimensions):
        return f"rank {tensor_type.rank} but {len(tensor_type.dimensions)} dimensions"
    for i, dim in enumerate(tensor_type.dimensions):
        kind = dim.WhichOneof("dimension")
        if kind is None:
            return f"dimension {i} is neither constant nor unknown"
        if kind == "constant" and not 0 <= dim.constant.size <= MAX_DIM:
            return f"dimension {i} has size {dim.constant.size}, outside 0 .. {MAX_DIM}"
    return None


def element_count(tensor_type):
    """Elements of a tensor type with constant dimensions (a Python int: never wraps), None if one is unknown."""
    sizes = []
    for dim in tensor_type.dimensions:
        if dim.WhichOneof("dimension") != "constant":
            return None
        sizes.append(int(dim.constant.size))
    return math.prod(sizes)


def type_text(value_type):
    """A short description of a ValueType for messages: fp32[1, ?, 16], or the kind of a non-tensor type."""
    if value_type.WhichOneof("type") != "tensorType":
        return str(value_type.WhichOneof("type"))
    t = value_type.tensorType
    dims = ", ".join(str(d.constant.size) if d.WhichOneof("dimension") == "constant" else "?" for d in t.dimensions)
    return f"{dtype_name(t.dataType)}[{dims}]"


def immediate_tensor_problem(value):
    """Whether an immediate tensor holds exactly the elements its declared type says, compared without decoding."""
    if value.type.WhichOneof("type") != "tensorType":
        return f"immediate tensor value with a {value.type.WhichOneof('type')} type"
    ttype = value.type.tensorType
    expected = element_count(ttype)
    if expected is None:
        return "immediate value's type has an unknown dimension"
    tensor = value.immediateValue.tensor
    kind = tensor.WhichOneof("value")
    if kind == "bytes":
        bits = BITS.get(ttype.dataType)
        if bits is None:
            return f"immediate value holds bytes, which {dtype_name(ttype.dataType)} has no encoding in"
        held, needed = len(tensor.bytes.values), (expected * bits + 7) // 8
        if held != needed:
            return (
                f"immediate value holds {held} bytes, its type says {expected} elements of "
                f"{dtype_name(ttype.dataType)} ({needed} bytes)"
            )
        return None
    held = len(getattr(tensor, kind).values) if kind is not None else 0
    if held != expected:
        return f"immediate value holds {held} elements, its type says {expected}"
    return None
