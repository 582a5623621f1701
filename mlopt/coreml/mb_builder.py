"""The builder for pymil programs (rewrites/builder.py has the contract): `mb` calls inserted before one op.

The conversion-time lowering pass hands it to a rule's `lower`, which thereby emits the very replacement
`mlopt optimize` writes into saved specs. Values are pymil Vars; every new op is named after the op it replaces.
"""

import numpy as np

from coremltools.converters.mil.mil import Builder as mb
from coremltools.converters.mil.mil import types
from coremltools.converters.mil.mil.types.symbolic import is_symbolic

from ..graph.dtypes import CAST_NAMES, NUMPY
from ..rewrites.builder import LoweringFailed, slice_masks
from ..rewrites.opset_rules import epsilon_dtype, folds_params
from .pymil_graph import DTYPES


class MbBuilder:
    def __init__(self, before_op, opset):
        self.before_op = before_op
        self.opset = opset
        self.base = before_op.name
        self._count = 0

    def _name(self, suffix):
        self._count += 1
        return f"{self.base}_{suffix}_{self._count}"

    def _args(self, suffix):
        return {"before_op": self.before_op, "name": self._name(suffix)}

    def dtype(self, value):
        return DTYPES.get(value.dtype, -1)

    def rank(self, value):
        return value.rank

    def dim(self, value, axis):
        size = value.shape[axis]
        return None if is_symbolic(size) else int(size)

    def const(self, array, dtype):
        return mb.const(val=np.asarray(array, NUMPY[dtype]), **self._args("const"))

    def mul(self, x, y):
        return mb.mul(x=x, y=y, **self._args("mul"))

    def add(self, x, y):
        return mb.add(x=x, y=y, **self._args("add"))

    def select(self, cond, a, b):
        return mb.select(cond=cond, a=a, b=b, **self._args("select"))

    def concat(self, values, axis):
        return mb.concat(values=list(values), axis=axis, **self._args("concat"))

    def slice_along(self, x, axis, begin, end):
        begins, ends, end_mask = slice_masks(x.rank, axis, begin, end)
        return mb.slice_by_index(x=x, begin=begins, end=ends, end_mask=end_mask, **self._args("slice"))

    def layer_norm(self, x, axes, epsilon, gamma=None, beta=None):
        eps = NUMPY[epsilon_dtype(self.opset, self.dtype(x), epsilon, gamma is not None or beta is not None)](epsilon)
        return mb.layer_norm(x=x, axes=list(axes), epsilon=eps, gamma=gamma, beta=beta, **self._args("layer_norm"))

    def instance_norm(self, x, epsilon, gamma=None, beta=None):
        eps = NUMPY[epsilon_dtype(self.opset, self.dtype(x), epsilon, gamma is not None or beta is not None)](epsilon)
        return mb.instance_norm(x=x, epsilon=eps, gamma=gamma, beta=beta, **self._args("instance_norm"))

    def elementwise(self, op_type, x, **literals):
        typed = {k: (v if isinstance(v, (str, bool, np.bool_, int, np.integer)) else NUMPY[self.dtype(x)](v))
                 for k, v in literals.items()}
        return getattr(mb, op_type)(x=x, **typed, **self._args(op_type))

    def folds_params(self, x, epsilon):
        return folds_params(self.opset, self.dtype(x), epsilon)

    def cast(self, x, dtype):
        return mb.cast(x=x, dtype=CAST_NAMES[dtype], **self._args("cast"))

    def linear(self, x, weight, bias=None):
        extra = {"bias": bias} if bias is not None else {}
        return mb.linear(x=x, weight=weight, **extra, **self._args("linear"))

    def matmul(self, x, y, transpose_x=False, transpose_y=False):
        return mb.matmul(x=x, y=y, transpose_x=bool(transpose_x), transpose_y=bool(transpose_y), **self._args("matmul"))

    def conv(self, x, weight, bias=None):
        extra = {"bias": bias} if bias is not None else {}
        return mb.conv(x=x, weight=weight, pad_type="valid", **extra, **self._args("conv"))

    def constant_value(self, value):
        return None if value.val is None else np.asarray(value.val)

    def constant_slice(self, value, axis, begin, end):
        array = self.constant_value(value)
        if array is None:
            raise LoweringFailed(f"'{value.name}' is not a constant known at conversion time; it cannot be split")
        index = tuple(slice(begin, end) if i == axis else slice(None) for i in range(array.ndim))
        return mb.const(val=np.ascontiguousarray(array[index]), **self._args("const"))

    def scaled_constant(self, value, factor):
        array = self.constant_value(value)
        if array is None or array.dtype.kind != "f":
            raise LoweringFailed(f"'{value.name}' is not a float constant known at conversion time; it cannot be scaled")
        with np.errstate(all="ignore"):
            return mb.const(val=(array.astype(np.float64) * factor).astype(array.dtype), **self._args("const"))

    def same_op(self, value, **inputs):
        raise LoweringFailed("rebuilding an op with other inputs is a saved-spec rewrite (mlopt optimize), not a conversion-time pass")

    def constant_as(self, value, shape):
        if value.val is None:  # known while converting: a const, or a cast of one before const elimination
            return None
        array = np.asarray(value.val)
        if array.size != int(np.prod(shape, dtype=object)):
            return None
        return mb.const(val=array.reshape(shape), **self._args("const"))

    def finish(self, value, old):
        """Make `value` replace the Var `old` (cast to its dtype if needed) in everything after `before_op`."""
        if value.dtype != old.dtype:
            value = mb.cast(x=value, dtype=types.builtin_to_string(old.dtype), **self._args("cast"))
        self.before_op.enclosing_block.replace_uses_of_var_after_op(anchor_op=self.before_op, old_var=old, new_var=value)
        return value
