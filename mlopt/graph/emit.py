"""MIL protobuf ops and values made from scratch: typed tensors, literals, `const` ops and ops binding named
inputs, each named with a fresh, valid MIL identifier. The saved-spec builder (rewrites/spec_builder.py) emits
replacements with it; the self-check's row-free stand-ins (numerics/row_free.py) build their ops with it too.

Every literal becomes its own `const` op (attribute `val`), every op carries a `name` attribute, and every new
name is a valid MIL identifier not yet used in the function (value names and op names share one namespace here).
"""

import re

import numpy as np

from ..package.proto import MIL_pb2
from .dtypes import BOOL, FLOAT16, FLOAT32, INT32, STRING

_INVALID = re.compile(r"[^A-Za-z0-9_@]")


def tensor_type(dtype, dims):
    """A ValueType for a tensor; `dims` entries are ints or None (unknown)."""
    vt = MIL_pb2.ValueType()
    vt.tensorType.dataType = dtype
    vt.tensorType.rank = len(dims)
    for d in dims:
        dim = vt.tensorType.dimensions.add()
        if d is None:
            dim.unknown.variadic = False
        else:
            dim.constant.size = int(d)
    return vt


def retyped(value_type, dtype=None, axis=None, size=None):
    """Copy of a tensor ValueType with another dtype and/or another static size along one axis."""
    vt = MIL_pb2.ValueType()
    vt.CopyFrom(value_type)
    if dtype is not None:
        vt.tensorType.dataType = dtype
    if axis is not None:
        dim = vt.tensorType.dimensions[axis]
        dim.Clear()
        if size is None:
            dim.unknown.variadic = False
        else:
            dim.constant.size = int(size)
    return vt


def string_value(text):
    value = MIL_pb2.Value()
    value.type.tensorType.dataType = STRING
    value.immediateValue.tensor.strings.values.append(text)
    return value


def literal(array, dtype):
    """An immediate `Value` holding `array` (scalar or small tensor) in `dtype`."""
    value = MIL_pb2.Value()
    array = np.asarray(array)
    value.type.CopyFrom(tensor_type(dtype, array.shape))
    tensor = value.immediateValue.tensor
    flat = array.reshape(-1)
    if dtype == FLOAT16:
        tensor.bytes.values = flat.astype(np.float16).tobytes()
    elif dtype == FLOAT32:
        tensor.floats.values.extend(flat.astype(np.float32).tolist())
    elif dtype == INT32:
        tensor.ints.values.extend(flat.astype(np.int32).tolist())
    elif dtype == BOOL:
        tensor.bools.values.extend(flat.astype(bool).tolist())
    elif dtype == STRING:
        tensor.strings.values.extend(str(s) for s in flat)
    else:
        raise ValueError(f"cannot emit a literal of dtype {dtype}")
    return value


class OpEmitter:
    def __init__(self, taken_names):
        self.taken = set(taken_names)

    def fresh(self, base):
        base = _INVALID.sub("_", base)
        if not base or not (base[0].isalpha() or base[0] == "_"):
            base = "_" + base
        name, k = base, 0
        while name in self.taken:
            k += 1
            name = f"{base}_{k}"
        self.taken.add(name)
        return name

    def op(self, op_type, inputs, output_type, output_name=None, name=None, base=None):
        """An op whose inputs bind value names (a list binds a variadic input); returns (op, output value name)."""
        base = base or op_type
        out = output_name or self.fresh(base)
        op = MIL_pb2.Operation()
        op.type = op_type
        for param, values in inputs.items():
            argument = op.inputs[param]
            for v in values if isinstance(values, list) else [values]:
                argument.arguments.add().name = v
        output = op.outputs.add()
        output.name = out
        output.type.CopyFrom(output_type)
        op.attributes["name"].CopyFrom(string_value(name or (out if output_name is None else self.fresh(base))))
        return op, out

    def const(self, base, array, dtype):
        """A `const` op holding `array`; returns (op, output value name)."""
        return self.const_value(base, literal(array, dtype))

    def const_value(self, base, value):
        """A `const` op holding the `Value` `value` (immediate or blob file); returns (op, output value name)."""
        out = self.fresh(base)
        op = MIL_pb2.Operation()
        op.type = "const"
        output = op.outputs.add()
        output.name = out
        output.type.CopyFrom(value.type)
        op.attributes["name"].CopyFrom(string_value(out))
        op.attributes["val"].CopyFrom(value)
        return op, out
