"""The builder for saved specs (rewrites/builder.py): MIL `Operation` protos, the way coremltools serialises them.

Ops and literals are made by graph/emit.py (fresh valid names, one `const` op per literal). Output types are inferred for the few ops a replacement uses (broadcast for mul/add, the sum along the axis for
concat, ...); the final value takes the replaced output's declared type exactly.
"""

import math
import weakref

import numpy as np

from ..graph.dtypes import BOOL, CAST_NAMES, INT32, NUMPY, STRING, SUB_BYTE
from ..graph.emit import OpEmitter, literal, retyped, string_value, tensor_type  # noqa: F401  (re-exported)
from ..graph.spec_graph import op_name
from ..graph.values import decode_value
from ..package.proto import MIL_pb2
from . import compressed_scaling, compressed_slicing
from .builder import LoweringFailed, broadcast_dims, slice_masks
from .opset_rules import epsilon_dtype, folds_params


# new blob offset of every slice of a stored weight already registered, per run (package/weight_writer.NewBlobs):
# two functions of a multifunction package that share a head weight share its chunks too
_SLICES = weakref.WeakKeyDictionary()


class SpecBuilder:
    """Emits one replacement into `ops`, over a SpecGraph `view` (rewrites/builder.py has the contract). New names
    start with `base` and avoid every name `emitter` has seen."""

    def __init__(self, view, emitter, base, new_blobs=None):
        self.view, self.emitter, self.base = view, emitter, base
        self.new_blobs = new_blobs  # package/weight_writer.NewBlobs: where new stored weights go (None: nowhere)
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

    def _append_copy(self, op, base):
        """Append `op` (a copy of a program op with some inputs or values changed) under a fresh name for its one
        output, its `name` attribute to match; the new value's name."""
        out = self.emitter.fresh(f"{self.base}_{base}")
        op.outputs[0].name = out
        op.attributes["name"].CopyFrom(string_value(out))
        self.ops.append(op)
        self._types[out] = op.outputs[0].type
        return out

    def const(self, array, dtype):
        return self._literal("const", array, dtype)

    def mul(self, x, y):
        return self._emit("mul", {"x": x, "y": y}, tensor_type(self.dtype(x), broadcast_dims(self._dims(x), self._dims(y))), "mul")

    def add(self, x, y):
        return self._emit("add", {"x": x, "y": y}, tensor_type(self.dtype(x), broadcast_dims(self._dims(x), self._dims(y))), "add")

    def select(self, cond, a, b):
        dims = broadcast_dims(broadcast_dims(self._dims(cond), self._dims(a)), self._dims(b))
        return self._emit("select", {"cond": cond, "a": a, "b": b}, tensor_type(self.dtype(a), dims), "select")

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

    def linear(self, x, weight, bias=None):
        dims = self._dims(x)[:-1] + [self.dim(weight, 0)]
        inputs = {"x": x, "weight": weight, **({"bias": bias} if bias is not None else {})}
        return self._emit("linear", inputs, tensor_type(self.dtype(x), dims), "linear")

    def matmul(self, x, y, transpose_x=False, transpose_y=False):
        a, b = self._dims(x), self._dims(y)
        if len(a) < 2 or len(b) < 2:
            raise LoweringFailed("a matmul of a rank-1 operand is not built")
        if transpose_x:
            a[-1], a[-2] = a[-2], a[-1]
        if transpose_y:
            b[-1], b[-2] = b[-2], b[-1]
        dims = broadcast_dims(a[:-2], b[:-2]) + [a[-2], b[-1]]
        inputs = {"x": x, "y": y, "transpose_x": self._literal("transpose_x", bool(transpose_x), BOOL),
                  "transpose_y": self._literal("transpose_y", bool(transpose_y), BOOL)}
        return self._emit("matmul", inputs, tensor_type(self.dtype(x), dims), "matmul")

    def conv(self, x, weight, bias=None):
        spatial = self.rank(x) - 2
        dims = self._dims(x)
        dims[1] = self.dim(weight, 0)
        inputs = {"x": x, "weight": weight, **({"bias": bias} if bias is not None else {}),
                  "strides": self._literal("strides", np.ones(spatial, np.int32), INT32),
                  "pad_type": self._literal("pad_type", "valid", STRING),
                  "pad": self._literal("pad", np.zeros(2 * spatial, np.int32), INT32),
                  "dilations": self._literal("dilations", np.ones(spatial, np.int32), INT32),
                  "groups": self._literal("groups", np.int32(1), INT32)}
        return self._emit("conv", inputs, tensor_type(self.dtype(x), dims), "conv")

    def _stored(self, value):
        """The const op defining `value` and its `val`, or (None, None)."""
        op = self._consts.get(value) or self.view.producer(value)
        if op is None or op.type != "const" or "val" not in op.attributes:
            return None, None
        return op, op.attributes["val"]

    def constant_value(self, value):
        op, stored = self._stored(value)
        if op is None:
            return None
        if stored.WhichOneof("value") == "immediateValue":
            return decode_value(stored)
        return self.view.const_value(value)

    def _blob_layout(self, value, stored):
        dims = self._dims(value)
        dtype = self.dtype(value)
        if None in dims or dtype not in NUMPY:
            raise LoweringFailed(f"'{value}' is stored with a shape or dtype a new weight cannot be cut from")
        if self.new_blobs is None:
            raise LoweringFailed(f"'{value}' is a stored weight, and this run writes no weight file")
        return dims, dtype

    def constant_slice(self, value, axis, begin, end):
        op, stored = self._stored(value)
        producer = self.view.producer(value) if op is None else None
        if producer is not None and producer.type in compressed_slicing.SLICERS:
            return self._compressed_slice(producer, value, axis, begin, end)
        if op is None:
            raise LoweringFailed(f"'{value}' is not a plain constant; it cannot be split")
        if stored.WhichOneof("value") != "blobFileValue":
            array = self.constant_value(value)
            if array is None:
                raise LoweringFailed(f"'{value}' holds a constant the builder cannot read")
            index = tuple(slice(begin, end) if i == axis else slice(None) for i in range(array.ndim))
            return self._literal("const", array[index], self.dtype(value))
        dims, dtype = self._blob_layout(value, stored)
        blob = stored.blobFileValue
        try:
            offset = self._add_slice(blob.fileName, blob.offset, NUMPY[dtype], dims, axis, begin, end)
        except ValueError as e:
            raise LoweringFailed(str(e)) from None
        shape = list(dims)
        shape[axis] = end - begin
        return self._stored_const(blob.fileName, offset, dtype, shape)

    def _add_slice(self, file_name, offset, np_dtype, dims, axis, begin, end):
        """The new blob holding a slice of a stored blob: registered once per run, however many rewrites ask."""
        memo = _SLICES.setdefault(self.new_blobs, {})
        key = (file_name, int(offset), np.dtype(np_dtype).str, tuple(int(d) for d in dims), int(axis), int(begin), int(end))
        if key not in memo:
            memo[key] = self.new_blobs.add_slice(file_name, offset, np_dtype, dims, axis, begin, end)
        return memo[key]

    def _compressed_slice(self, producer, value, axis, begin, end):
        """A new constexpr op of `producer`'s type computing value[begin:end] along `axis`: each of its stored
        parameters sliced in its compressed form (rewrites/compressed_slicing.py says which and when)."""
        if self.new_blobs is None:
            raise LoweringFailed(f"'{value}' is a stored weight, and this run writes no weight file")
        weight_dims = self._dims(value)
        plan = compressed_slicing.plan(producer, weight_dims, axis, begin, end)  # raises LoweringFailed
        op = MIL_pb2.Operation()
        op.CopyFrom(producer)
        for where, name, sliced_axis, b, e in plan:
            held = op.attributes[name] if where == "attribute" else op.inputs[name].arguments[0].value
            held.CopyFrom(self._sliced_value(held, name, sliced_axis, b, e))
        op.outputs[0].type.CopyFrom(retyped(self._type(value), axis=axis, size=end - begin))
        return self._append_copy(op, producer.type)

    def _sliced_value(self, held, name, axis, begin, end):
        """A parameter `Value` of a constexpr op cut to [begin:end] along `axis`: a stored one by byte ranges."""
        dtype = held.type.tensorType.dataType
        dims = _dims_of(held.type)
        if None in dims:
            raise LoweringFailed(f"its '{name}' has a shape unknown until run time")
        sliced = MIL_pb2.Value()
        sliced.CopyFrom(held)
        sliced.type.CopyFrom(retyped(held.type, axis=axis, size=end - begin))
        if held.WhichOneof("value") == "blobFileValue":
            np_dtype = np.uint8 if dtype in SUB_BYTE else NUMPY.get(dtype)
            if np_dtype is None:
                raise LoweringFailed(f"its '{name}' is stored as a type a new weight cannot be cut from")
            blob = held.blobFileValue
            try:
                sliced.blobFileValue.offset = self._add_slice(blob.fileName, blob.offset, np_dtype, dims, axis, begin, end)
            except ValueError as e:
                raise LoweringFailed(f"its '{name}': {e}") from None
            return sliced
        array = decode_value(held) if dtype not in SUB_BYTE else None
        if array is None:
            raise LoweringFailed(f"its '{name}' is held inline in a form the builder does not cut")
        index = tuple(slice(begin, end) if i == axis else slice(None) for i in range(array.ndim))
        return literal(np.ascontiguousarray(array[index]), dtype)

    def same_op(self, value, **inputs):
        op = self.view.producer(value)
        if op is None or len(op.outputs) != 1 or op.blocks:
            raise LoweringFailed(f"'{value}' is not the one output of an op without blocks; it cannot be rebuilt")
        new = MIL_pb2.Operation()
        new.CopyFrom(op)
        for param, bound in inputs.items():
            argument = new.inputs[param]
            del argument.arguments[:]
            argument.arguments.add().name = bound
        return self._append_copy(new, op.type)

    def scaled_constant(self, value, factor):
        op, stored = self._stored(value)
        producer = self.view.producer(value) if op is None else None
        if producer is not None and producer.type in compressed_scaling.SCALED_PARAM:
            return self._compressed_scaled(producer, value, factor)
        if op is None:
            raise LoweringFailed(f"'{value}' is not a plain constant; it cannot be scaled")
        if stored.WhichOneof("value") != "blobFileValue":
            array = self.constant_value(value)
            if array is None or array.dtype.kind != "f":
                raise LoweringFailed(f"'{value}' holds no float constant the builder can read")
            with np.errstate(all="ignore"):
                return self._literal("const", (array.astype(np.float64) * factor).astype(array.dtype), self.dtype(value))
        dims, dtype = self._blob_layout(value, stored)
        blob = stored.blobFileValue
        try:
            offset = self.new_blobs.add_scaled(blob.fileName, blob.offset, NUMPY[dtype], dims, factor)
        except ValueError as e:
            raise LoweringFailed(str(e)) from None
        return self._stored_const(blob.fileName, offset, dtype, dims)

    def _compressed_scaled(self, producer, value, factor):
        """A new constexpr op of `producer`'s type computing `value` * factor: the one parameter its decompression
        is linear in scaled (rewrites/compressed_scaling.py), everything else held as it is."""
        name = compressed_scaling.SCALED_PARAM[producer.type]
        op = MIL_pb2.Operation()
        op.CopyFrom(producer)
        held = compressed_scaling.held_param(op, name)
        if held is None:
            raise LoweringFailed(f"its {producer.type} reads '{name}' from another op, not from a value it holds")
        dtype = held.type.tensorType.dataType
        if held.WhichOneof("value") == "blobFileValue":
            dims = _dims_of(held.type)
            if None in dims or dtype not in NUMPY:
                raise LoweringFailed(f"its {producer.type}'s '{name}' is stored with a shape or dtype it cannot be scaled in")
            if self.new_blobs is None:
                raise LoweringFailed(f"'{value}' is a stored weight, and this run writes no weight file")
            blob = held.blobFileValue
            try:
                held.blobFileValue.offset = self.new_blobs.add_scaled(blob.fileName, blob.offset, NUMPY[dtype], dims, factor)
            except ValueError as e:
                raise LoweringFailed(f"its '{name}': {e}") from None
        else:
            array = decode_value(held) if dtype not in SUB_BYTE else None
            if array is None or array.dtype.kind != "f":
                raise LoweringFailed(f"its {producer.type}'s '{name}' holds no float value the builder can read")
            with np.errstate(all="ignore"):
                held.CopyFrom(literal((array.astype(np.float64) * factor).astype(array.dtype), dtype))
        return self._append_copy(op, producer.type)

    def _stored_const(self, file_name, offset, dtype, shape):
        stored = MIL_pb2.Value()
        stored.type.CopyFrom(tensor_type(dtype, shape))
        stored.blobFileValue.fileName = file_name
        stored.blobFileValue.offset = offset
        return self._keep_const(*self.emitter.const_value(f"{self.base}_const", stored))

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
        if value in self._consts:  # a constant result: its const op moves last and becomes the output
            op = self._consts.pop(value)
            if _dims_of(op.outputs[0].type) != _dims_of(output.type):
                raise LoweringFailed(f"the constant it returns has shape {_dims_of(op.outputs[0].type)}, the chain's output {_dims_of(output.type)}")
            self.ops.remove(op)
            self.ops.append(op)
        elif value not in self._types:  # a value the chain reads (x itself): passed on by an identity
            value = self._emit("identity", {"x": value}, retyped(self._type(value)), "identity")
        last = self.ops[-1] if self.ops else None
        if last is None or last.outputs[0].name != value:
            raise LoweringFailed(f"a replacement must end with the op defining its result, not '{value}'")
        last.outputs[0].name = output.name
        last.outputs[0].type.CopyFrom(output.type)
        last.attributes["name"].CopyFrom(string_value(op_name(output_op)))
        return self.ops


def _dims_of(value_type):
    return [int(d.constant.size) if d.WhichOneof("dimension") == "constant" else None for d in value_type.tensorType.dimensions]
