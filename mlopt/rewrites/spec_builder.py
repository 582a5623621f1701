"""The builder for saved specs (rewrites/builder.py): MIL `Operation` protos, the way coremltools serialises them.

Every literal becomes its own `const` op (attribute `val`), every op carries a `name` attribute, and every new
name is a valid MIL identifier not yet used in the function (value names and op names share one namespace here).
Output types are inferred for the few ops a replacement uses (broadcast for mul/add, the sum along the axis for
concat, ...); the final value takes the replaced output's declared type exactly.
"""

import math
import re

import numpy as np

from ..graph.dtypes import BOOL, CAST_NAMES, FLOAT16, FLOAT32, INT32, STRING
from ..graph.spec_graph import op_name
from ..graph.values import decode_value
from ..package.proto import MIL_pb2
from .builder import broadcast_dims, slice_masks
from .opset_rules import epsilon_dtype, folds_params

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


def _string_value(text):
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
        op.attributes["name"].CopyFrom(_string_value(name or (out if output_name is None else self.fresh(base))))
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
        op.attributes["name"].CopyFrom(_string_value(out))
        op.attributes["val"].CopyFrom(value)
        return op, out


class SpecBuilder:
    """Emits one replacement into `ops`, over a SpecGraph `view` (rewrites/builder.py has the contract). New names
    start with `base` and avoid every name `emitter` has seen."""

    def __init__(self, view, emitter, base):
        self.view, self.emitter, self.base = view, emitter, base
        self.opset = view.opset
        self.ops = []
        self._types = {}  # new value -> ValueType
        self._consts = {}  # new value -> its const op

    # -- reading values ------------------------------------------------------------------------------------------
    def _type(self, value):
        return self._types.get(value) or self.view.types[value]

    def dtype(self, value):
        return self._type(value).tensorType.dataType

    def rank(self, value):
        return self._type(value).tensorType.rank

    def dim(self, value, axis):
        d = self._type(value).tensorType.dimensions[axis]
        return int(d.constant.size) if d.WhichOneof("dimension") == "constant" else None

    def _dims(self, value):
        return [self.dim(value, i) for i in range(self.rank(value))]

    # -- emitting ops ----------------------------------------------------------------------------------------------
    def _emit(self, op_type, inputs, value_type, suffix):
        op, out = self.emitter.op(op_type, inputs, value_type, base=f"{self.base}_{suffix}")
        self.ops.append(op)
        self._types[out] = value_type
        return out

    def _literal(self, suffix, array, dtype):
        return self._keep_const(*self.emitter.const(f"{self.base}_{suffix}", array, dtype))

    def _keep_const(self, op, out):
        self.ops.append(op)
        self._types[out] = op.outputs[0].type
        self._consts[out] = op
        return out

    def const(self, array, dtype):
        return self._literal("const", array, dtype)

    def mul(self, x, y):
        return self._emit("mul", {"x": x, "y": y}, tensor_type(self.dtype(x), broadcast_dims(self._dims(x), self._dims(y))), "mul")

    def add(self, x, y):
        return self._emit("add", {"x": x, "y": y}, tensor_type(self.dtype(x), broadcast_dims(self._dims(x), self._dims(y))), "add")

    def concat(self, values, axis):
        sizes = [self.dim(v, axis) for v in values]
        total = None if any(s is None for s in sizes) else sum(sizes)
        inputs = {"values": list(values), "axis": self._literal("axis", np.int32(axis), INT32),
                  "interleave": self._literal("interleave", False, BOOL)}
        return self._emit("concat", inputs, retyped(self._type(values[0]), axis=axis, size=total), "concat")

    def slice_along(self, x, axis, begin, end):
        begins, ends, end_mask = slice_masks(self.rank(x), axis, begin, end)
        inputs = {"x": x, "begin": self._literal("begin", begins, INT32), "end": self._literal("end", ends, INT32),
                  "end_mask": self._literal("end_mask", end_mask, BOOL)}
        return self._emit("slice_by_index", inputs, retyped(self._type(x), axis=axis, size=end - begin), "slice")

    def layer_norm(self, x, axes, epsilon, gamma=None, beta=None):
        return self._norm("layer_norm", x, epsilon, gamma, beta, axes=self._literal("axes", np.array(axes, np.int32), INT32))

    def instance_norm(self, x, epsilon, gamma=None, beta=None):
        return self._norm("instance_norm", x, epsilon, gamma, beta)

    def _norm(self, op_type, x, epsilon, gamma, beta, **more):
        """layer_norm / instance_norm: one dtype rule for their epsilon, gamma and beta (rewrites/opset_rules.py)."""
        dtype = self.dtype(x)
        inputs = {"x": x, **more, "epsilon": self._literal(
            "epsilon", epsilon, epsilon_dtype(self.opset, dtype, epsilon, gamma is not None or beta is not None))}
        for param, value in (("gamma", gamma), ("beta", beta)):
            if value is not None:
                inputs[param] = value
        return self._emit(op_type, inputs, retyped(self._type(x)), op_type)

    def elementwise(self, op_type, x, **literals):
        inputs = {"x": x}
        for name, value in literals.items():
            dtype = STRING if isinstance(value, str) else BOOL if isinstance(value, (bool, np.bool_)) else \
                INT32 if isinstance(value, (int, np.integer)) else self.dtype(x)
            inputs[name] = self._literal(name, value, dtype)
        return self._emit(op_type, inputs, retyped(self._type(x)), op_type)

    def folds_params(self, x, epsilon):
        return folds_params(self.opset, self.dtype(x), epsilon)

    def cast(self, x, dtype):
        inputs = {"x": x, "dtype": self._literal("dtype", CAST_NAMES[dtype], STRING)}
        return self._emit("cast", inputs, retyped(self._type(x), dtype=dtype), "cast")

    def constant_as(self, value, shape):
        op = self._consts.get(value) or self.view.producer(value)
        if op is None or op.type != "const" or "val" not in op.attributes:
            return None
        stored = op.attributes["val"]
        dims = [self.dim(value, i) for i in range(self.rank(value))]
        if stored.type.WhichOneof("type") != "tensorType" or None in dims or math.prod(dims) != math.prod(shape):
            return None
        dtype = stored.type.tensorType.dataType
        if stored.WhichOneof("value") == "immediateValue":  # re-encoded: an immediate payload has no shape of its own
            array = decode_value(stored)
            return None if array is None else self._literal("const", array.reshape(shape), dtype)
        reshaped = MIL_pb2.Value()  # a blob file value: the same bytes, read with another shape
        reshaped.CopyFrom(stored)
        reshaped.type.CopyFrom(tensor_type(dtype, shape))
        return self._keep_const(*self.emitter.const_value(f"{self.base}_const", reshaped))

    # -- the end -----------------------------------------------------------------------------------------------------
    def finish(self, value, output_op):
        """Make `value` (the output of the last op emitted) replace `output_op`'s output: cast to its dtype if
        needed, then take its name, its declared type exactly and the op's name."""
        output = output_op.outputs[0]
        if self.dtype(value) != output.type.tensorType.dataType:
            value = self.cast(value, output.type.tensorType.dataType)
        last = self.ops[-1] if self.ops else None
        if last is None or last.outputs[0].name != value or last.type == "const":
            raise ValueError(f"a replacement must end with the op defining its result, not '{value}'")
        last.outputs[0].name = output.name
        last.outputs[0].type.CopyFrom(output.type)
        last.attributes["name"].CopyFrom(_string_value(op_name(output_op)))
        return self.ops
