"""Structural validation of a parsed ML program, before anything walks it.

Everything after parsing (graph views, pattern walks, the interpreter, the rewriter) assumes a well-formed
program: every value read is defined, nothing is defined twice, every type is a sane tensor type. A malformed or
adversarial file breaks those assumptions in ways that crash, loop or allocate without bound, so the package
reader calls `validate_program` once, right after parsing, and turns every violation into a `BadInputError`.

The central rule is def-before-use: every value an op reads by name is defined before it - a function input,
an earlier op's output in its own block or an enclosing block, or an input of its own or an enclosing block.
That one rule rules out undefined values, an op reading its own output and every cycle, so every later walk of
the graph (up producers, down consumers) terminates. Each name is defined once per function (the view indexes
values by name), except that sibling blocks may reuse block input names: coremltools names a while_loop's cond
and body block inputs alike. Every op defines something, except `write_state`; a `const` has a `val` whose type
is its output's and whose immediate payload holds exactly the elements that type declares.

Zero-size dimensions are accepted: coremltools writes them (a `TensorSpec(shape=(0, 3))` input converts and
saves as a constant dimension of size 0) and its proto loader reads them back; only sizes beyond int32 are
refused (MIL sizes are int32; the proto field is uint64, so there are no negative ones). List, tuple, dictionary
and state types are accepted (a state must wrap a tensor).

Every op is also checked against its signature in the function's opset (graph/signatures.py: a known op type,
its required inputs bound, each input of an allowed kind and dtype), as coremltools' op registry defines them.

One pass over the program, linear in its size; declared shapes are multiplied as Python ints and nothing is
allocated from them.
"""

from ..errors import BadInputError
from .signatures import op_problem
from .type_checks import MAX_DIM, element_count, immediate_tensor_problem, type_problem, type_text
from .spec_graph import op_name

__all__ = ["MAX_DIM", "program_problem", "validate_program"]

NO_OUTPUTS = frozenset({"write_state"})  # ops that define nothing in real models


class _Invalid(Exception):
    """One structural problem, already phrased for the user."""


def validate_program(spec, model_path):
    """Raise BadInputError(model_path, problem) for the first structural problem of `spec`'s ML program.

    A spec that holds no ML program is left to the reader's own check."""
    if spec.WhichOneof("Type") != "mlProgram":
        return
    functions = spec.mlProgram.functions
    if not functions:
        raise BadInputError(model_path, "the ML program has no functions")
    for name in sorted(functions):
        try:
            _check_function(name, functions[name])
        except _Invalid as e:
            raise BadInputError(model_path, f"function '{name}': {e}") from None


def program_problem(spec):
    """The first structural problem of `spec`'s ML program as a message, or None (for tests and tools)."""
    try:
        validate_program(spec, "")
    except BadInputError as e:
        return e.problem
    return None


def _describe(op):
    return f"op '{op_name(op)}' ({op.type})"


def _owner(op):
    return "the function body" if op is None else _describe(op)


def _check_function(name, function):
    inputs = {}
    for inp in function.inputs:
        _check_type(inp.type, lambda: f"input '{inp.name}'")
        if inp.name in inputs:
            raise _Invalid(f"input '{inp.name}' is defined twice")
        inputs[inp.name] = inp.type
    for key in sorted(function.block_specializations):  # alternative bodies: each its own namespace and opset
        _BlockWalker(inputs, key).walk(function.block_specializations[key])


class _BlockWalker:
    """Walks a block tree in program order with an explicit stack (no recursion, whatever the nesting)."""

    def __init__(self, inputs, opset):
        self.opset = opset  # the signatures every op is checked against
        self.types = dict(inputs)  # value name -> its declared ValueType
        self.visible = set(inputs)  # defined and in scope at the current point
        self.by_ops = set(inputs)  # function inputs and op outputs defined so far, in any block
        self.block_inputs = set()  # block inputs defined so far, in any block
        self.scopes = []  # per open block, the names it defined (they go out of scope at its end)

    def define(self, value, twice, block_input=False):
        """A block input may reuse the name of an out-of-scope block input (coremltools gives a while_loop's
        cond and body blocks the same input names); every other name is defined once in the function."""
        if value in self.by_ops or value in (self.visible if block_input else self.block_inputs):
            raise _Invalid(twice())
        (self.block_inputs if block_input else self.by_ops).add(value)
        self.visible.add(value)
        self.scopes[-1].append(value)

    def walk(self, main):
        stack = self._block_events(main, None)
        while stack:
            event, item, owner = stack.pop()
            if event == "enter":
                self.scopes.append([])
                for inp in item.inputs:
                    where = lambda inp=inp: f"{_owner(owner)}: block input '{inp.name}'"
                    _check_type(inp.type, where)
                    self.define(inp.name, lambda: f"{where()} is already defined", block_input=True)
                    self.types[inp.name] = inp.type
            elif event == "exit":
                for out in item.outputs:
                    if out not in self.visible:
                        where = f"{_describe(owner)}: block output" if owner is not None else "output"
                        raise _Invalid(f"{where} '{out}' is not defined")
                self.visible.difference_update(self.scopes.pop())
            elif event == "op":
                self._check_op(item)
                if item.blocks:
                    stack.append(("outputs", item, None))
                    for block in reversed(item.blocks):
                        stack.extend(self._block_events(block, item))
                else:
                    self._define_outputs(item)
            else:  # "outputs": after its nested blocks, an op's outputs come into scope
                self._define_outputs(item)

    @staticmethod
    def _block_events(block, owner):
        """Events for one block, in pop order: enter, its ops, exit."""
        events = [("exit", block, owner)]
        events.extend(("op", op, None) for op in reversed(block.operations))
        events.append(("enter", block, owner))
        return events

    def _check_op(self, op):
        if not op.outputs and op.type not in NO_OUTPUTS:
            raise _Invalid(f"{_describe(op)} has no outputs")
        for param, argument in op.inputs.items():
            for k, binding in enumerate(argument.arguments):
                kind = binding.WhichOneof("binding")
                if kind == "name":
                    if binding.name not in self.visible:
                        raise _Invalid(f"{_describe(op)} reads '{binding.name}', which is not defined before it")
                elif kind == "value":
                    _check_value(binding.value, lambda: f"{_describe(op)} input '{param}'")
                else:
                    raise _Invalid(f"{_describe(op)} input '{param}': binding {k} is empty")
        for out in op.outputs:
            _check_type(out.type, lambda out=out: f"{_describe(op)} output '{out.name}'")
        if op.type == "const":
            if "val" not in op.attributes:
                raise _Invalid(f"{_describe(op)} has no 'val' attribute")
            _check_value(op.attributes["val"], lambda: _describe(op))
            _check_const_type(op)
        problem = op_problem(op, self.opset, self.types.__getitem__)
        if problem:
            raise _Invalid(f"{_describe(op)} {problem}")

    def _define_outputs(self, op):
        for out in op.outputs:
            self.define(out.name, lambda: f"{_describe(op)} defines '{out.name}', which is already defined")
            self.types[out.name] = out.type


def _check_const_type(op):
    """A const's output is its value: same dtype and rank, and the value's size wherever the output's is known."""
    value_type, out = op.attributes["val"].type, op.outputs[0] if op.outputs else None
    if out is None or value_type.WhichOneof("type") != "tensorType" or out.type.WhichOneof("type") != "tensorType":
        return
    v, o = value_type.tensorType, out.type.tensorType
    same = v.dataType == o.dataType and v.rank == o.rank and all(
        od.WhichOneof("dimension") != "constant" or od.constant.size == vd.constant.size
        for vd, od in zip(v.dimensions, o.dimensions)
    )
    if not same:
        declared, held = type_text(out.type), type_text(value_type)
        raise _Invalid(f"{_describe(op)}: output '{out.name}' is declared {declared}, its value is {held}")


def _check_type(value_type, where):
    problem = type_problem(value_type)
    if problem:
        raise _Invalid(f"{where()}: {problem}")


def _check_value(value, where):
    """A literal (`const` val, inline binding): its type, and an immediate tensor holding what its type says."""
    _check_type(value.type, lambda: f"{where()} value")
    kind = value.WhichOneof("value")
    if kind is None:
        raise _Invalid(f"{where()}: value holds neither an immediate value nor a weight-file reference")
    if kind == "blobFileValue":
        if value.type.WhichOneof("type") != "tensorType" or element_count(value.type.tensorType) is None:
            raise _Invalid(f"{where()}: weight-file value needs a tensor type with constant dimensions")
        return
    immediate = value.immediateValue
    if immediate.WhichOneof("value") == "list":
        for item in immediate.list.values:
            _check_value(item, where)
    elif immediate.WhichOneof("value") == "tuple":
        for item in immediate.tuple.values:
            _check_value(item, where)
    elif immediate.WhichOneof("value") == "tensor":
        problem = immediate_tensor_problem(value)
        if problem:
            raise _Invalid(f"{where()}: {problem}")
