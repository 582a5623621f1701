"""The pymil adapter of the graph interface (graph/interface.py): the RMSNorm pattern on a coremltools program
during conversion, with the very matching rules `mlopt optimize` uses on saved specs."""

from collections import defaultdict

import numpy as np

from coremltools.converters.mil.mil import types
from coremltools.converters.mil.mil.types.symbolic import is_symbolic

from ..graph.dtypes import BOOL, FLOAT16, FLOAT32, FLOAT64, FLOATS, INT32
from ..graph.interface import Use
from ..graph.spec_graph import chunked

DTYPES = {types.fp16: FLOAT16, types.fp32: FLOAT32, types.fp64: FLOAT64, types.int32: INT32, types.bool: BOOL}


class PymilGraph:
    """A read-only index over one pymil function: values are Var names, ops are pymil Operations."""

    def __init__(self, name, function):
        self.name = name
        self.function = function
        self.vars = {}  # name -> Var
        self._uses = defaultdict(list)
        self._position = {}
        self._ops = []
        self._constant = {}
        for var in function.inputs.values():
            self.vars[var.name] = var
        self._index(function)

    def _index(self, block):
        inputs = block.inputs.values() if isinstance(block.inputs, dict) else block.inputs  # Function: a dict
        for var in inputs:
            self.vars[var.name] = var
        for op in block.operations:
            self._position[id(op)] = len(self._ops)
            self._ops.append(op)
            for param, bound in op.inputs.items():
                for var in bound if isinstance(bound, (list, tuple)) else [bound]:
                    self._uses[var.name].append(Use(op, param, block))
            for out in op.outputs:
                self.vars[out.name] = out
            for nested in op.blocks:
                self._index(nested)
        for out in block.outputs:
            self._uses[out.name].append(Use(None, "output", block))

    def ops(self):
        return list(self._ops)

    def op_type(self, op):
        return op.op_type

    def op_name(self, op):
        return op.name

    def output(self, op):
        return op.outputs[0].name

    def has_input(self, op, param):
        return op.inputs.get(param) is not None

    def arg(self, op, param):
        bound = op.inputs.get(param)
        if isinstance(bound, (list, tuple)):
            bound = bound[0] if bound else None
        return None if bound is None else bound.name

    def args(self, op, param):
        bound = op.inputs.get(param)
        if bound is None:
            return []
        return [v.name for v in (bound if isinstance(bound, (list, tuple)) else [bound])]

    def const(self, op, param):
        bound = op.inputs.get(param)
        if bound is None or isinstance(bound, (list, tuple)) or bound.val is None:
            return None
        value = np.asarray(bound.val)
        return None if value.dtype == object else value

    def const_value(self, value):
        var = self.vars.get(value)
        if var is None or var.op is None or var.op.op_type != "const" or var.val is None:
            return None
        array = np.asarray(var.val)
        return None if array.dtype == object else array

    def const_chunks(self, value, window=None):
        return chunked(self.const_value(value), window)

    def producer(self, value):
        return self.vars[value].op

    def consumers(self, value):
        return self._uses.get(value, [])

    def dtype(self, value):
        return DTYPES.get(self.vars[value].dtype, -1)

    def rank(self, value):
        return self.vars[value].rank

    def dim(self, value, axis):
        size = self.vars[value].shape[axis]
        return None if is_symbolic(size) else int(size)

    def is_float_tensor(self, value):
        return self.dtype(value) in FLOATS

    def is_constant_expr(self, value):
        if value not in self._constant:
            op = self.vars[value].op
            if op is None or op.op_type == "read_state" or op.blocks:
                self._constant[value] = False
            elif op.op_type == "const" or self.vars[value].val is not None:
                self._constant[value] = True
            else:
                self._constant[value] = False  # no cycles: set before recursing
                inputs = [v for b in op.inputs.values() for v in (b if isinstance(b, (list, tuple)) else [b])]
                self._constant[value] = all(self.is_constant_expr(v.name) for v in inputs)
        return self._constant[value]

    def block(self, op):
        return op.enclosing_block

    def position(self, op):
        return self._position[id(op)]
