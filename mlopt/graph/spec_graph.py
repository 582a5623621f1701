"""A read-only view over one MIL function of a saved spec: the spec adapter of the graph interface.

Built once per function by walking every block, nested `cond`/`while_loop` blocks included. A use is an op input
(in any block; a nested op reading an outer value counts), a block output, or - for the main block - a function
output. Patterns ask it the questions of graph/interface.py; they never walk the protobuf themselves. The spec-only
parts (types, op_by_name, blocks) serve the rewriter and the interpreter.
"""

import numpy as np

from .dtypes import FLOATS
from .interface import Use
from .values import decode_value


def read_names(op):
    """The values `op` reads by name, in argument order (inline literals left out): every walk up a program
    (dependencies, upstream searches) goes through this one reading of an op's bindings."""
    return [b.name for argument in op.inputs.values() for b in argument.arguments if b.WhichOneof("binding") == "name"]


def op_name(op):
    attr = op.attributes.get("name")
    if attr is not None and attr.immediateValue.tensor.strings.values:
        return attr.immediateValue.tensor.strings.values[0]
    return op.outputs[0].name if op.outputs else op.type


def chunked(array, window=None):
    """The flat elements of an in-memory constant, `window` at a time (one chunk without a window); None for None."""
    if array is None:
        return None
    flat = np.asarray(array).reshape(-1)
    window = max(1, window or flat.size or 1)
    return (flat[start : start + window] for start in range(0, flat.size, window))


class SpecGraph:
    def __init__(self, name, function, stored=None):
        """`stored` (graph/stored_constants.py), if given, reads weight-file constants: small ones whole (how
        patterns read the 1/N and eps tensors StableHLO stores in weight.bin), any size through a bounded window."""
        self.name = name
        self.function = function
        self.stored = stored
        self._blob_memo = {}
        self.opset = function.opset
        self.main = function.block_specializations[function.opset]
        self.producers = {}  # value name -> producing Operation
        self.block_of = {}  # id(Operation) -> Block that holds it
        self.types = {}  # value name -> ValueType
        self.uses = {}  # value name -> [Use]
        self.op_by_name = {}  # op name -> Operation (the last one, if a malformed program repeats a name)
        self.duplicate_op_names = set()  # op names more than one op carries
        self.order = {}  # id(Operation) -> position in a walk of all blocks (program order within a block)
        self.blocks = []
        self._constant_memo = {}
        for inp in function.inputs:
            self.types[inp.name] = inp.type
        self._index_block(self.main)

    def _index_block(self, block):
        self.blocks.append(block)
        for inp in block.inputs:
            self.types[inp.name] = inp.type
        for op in block.operations:
            self.block_of[id(op)] = block
            self.order[id(op)] = len(self.order)
            if op_name(op) in self.op_by_name:
                self.duplicate_op_names.add(op_name(op))
            self.op_by_name[op_name(op)] = op
            for param, argument in op.inputs.items():
                for binding in argument.arguments:
                    if binding.WhichOneof("binding") == "name":
                        self.uses.setdefault(binding.name, []).append(Use(op, param, block))
            for out in op.outputs:
                self.producers[out.name] = op
                self.types[out.name] = out.type
            for nested in op.blocks:
                self._index_block(nested)
        for out in block.outputs:
            self.uses.setdefault(out, []).append(Use(None, "output", block))

    # -- the graph interface (graph/interface.py) -------------------------------------------------------------
    def ops(self):
        for block in self.blocks:
            yield from block.operations

    def op_type(self, op):
        return op.type

    def op_name(self, op):
        return op_name(op)

    def output(self, op):
        return op.outputs[0].name

    def has_input(self, op, param):
        return param in op.inputs

    def producer(self, value):
        return self.producers.get(value)

    def block(self, op):
        return self.block_of[id(op)]

    def position(self, op):
        return self.order[id(op)]

    def names_in_use(self):
        """Every value name and op name of the function: new names must avoid all of them."""
        return set(self.types) | set(self.op_by_name)

    def consumers(self, value):
        return self.uses.get(value, [])

    def arg(self, op, param):
        """Name of the value bound to `param` of `op` (first binding), or None if absent or an inline literal."""
        argument = op.inputs.get(param)
        if argument is None or not argument.arguments:
            return None
        binding = argument.arguments[0]
        return binding.name if binding.WhichOneof("binding") == "name" else None

    def args(self, op, param):
        argument = op.inputs.get(param)
        if argument is None:
            return []
        return [b.name if b.WhichOneof("binding") == "name" else None for b in argument.arguments]

    def const(self, op, param):
        """numpy value of `param` of `op` if it is an immediate literal (inline or via a `const` op), else None."""
        argument = op.inputs.get(param)
        if argument is None or len(argument.arguments) != 1:
            return None
        binding = argument.arguments[0]
        if binding.WhichOneof("binding") == "value":
            return decode_value(binding.value)
        return self.const_value(binding.name)

    def const_value(self, value):
        producer = self.producers.get(value)
        if producer is None or producer.type != "const" or "val" not in producer.attributes:
            return None
        stored = producer.attributes["val"]
        if stored.WhichOneof("value") == "blobFileValue":
            if self.stored is None:
                return None
            if value not in self._blob_memo:
                self._blob_memo[value] = self.stored.small(stored)
            return self._blob_memo[value]
        return decode_value(stored)

    def const_chunks(self, value, window=None):
        """The flat elements of the constant `value` (any size), at most `window` at a time, or None."""
        producer = self.producers.get(value)
        if producer is None or producer.type != "const" or "val" not in producer.attributes:
            return None
        stored = producer.attributes["val"]
        if stored.WhichOneof("value") == "blobFileValue":
            return None if self.stored is None else self.stored.chunks(stored, window)
        return chunked(decode_value(stored), window)

    def is_const(self, value):
        """True for the output of a `const` op (immediate or blob file)."""
        producer = self.producers.get(value)
        return producer is not None and producer.type == "const"

    def is_constant_expr(self, value):
        """True if `value` depends on no function input or state: a const, or ops on consts only (constant per call).

        An explicit depth-first walk (no recursion). A value first met is entered and its unknown inputs pushed;
        met again, its inputs are settled - except one still being entered, which means a cycle: a value that
        depends on itself is never constant. A validated spec has no cycles; this keeps a view built from anything
        else from looping."""
        memo = self._constant_memo
        stack, entered = [value], set()
        while stack:
            v = stack[-1]
            if v in memo:
                stack.pop()
                continue
            op = self.producers.get(v)
            if op is None or op.type == "read_state" or op.blocks:
                memo[v] = op is not None and op.type == "const"
                stack.pop()
                continue
            inputs = read_names(op)
            if v not in entered:
                entered.add(v)
                stack.extend(i for i in inputs if i not in memo and i not in entered)
                continue
            memo[v] = all(memo.get(i, False) for i in inputs)  # an input not settled is on a cycle through v
            stack.pop()
        return memo[value]

    def dtype(self, value):
        return self.types[value].tensorType.dataType

    def rank(self, value):
        return self.types[value].tensorType.rank

    def dim(self, value, axis):
        """Static size of `value` along `axis`, or None if unknown."""
        d = self.types[value].tensorType.dimensions[axis]
        return int(d.constant.size) if d.WhichOneof("dimension") == "constant" else None

    def is_float_tensor(self, value):
        t = self.types.get(value)
        return t is not None and t.WhichOneof("type") == "tensorType" and t.tensorType.dataType in FLOATS

