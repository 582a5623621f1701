"""Structural validation (mlopt/graph/validate.py): every real model passes; each way a program can be malformed is
refused with one line naming the function and the op. Also home of `Program`, a tiny MIL builder the hardening
tests share: exact control over every name, type and literal, which converters would never let us get wrong."""

import glob
import os
import time
import tracemalloc

import numpy as np
import pytest

from conftest import FIXTURES
from mlopt.errors import BadInputError
from mlopt.graph.validate import MAX_DIM, program_problem, validate_program
from mlopt.package import read_package
from mlopt.package.proto import MIL_pb2, Model_pb2

DT = MIL_pb2.DataType
KINDS = {"FLOAT32": "floats", "INT32": "ints", "BOOL": "bools", "STRING": "strings", "FLOAT64": "doubles"}


def ttype(dims, dtype="FLOAT32"):
    """A tensor ValueType; None in `dims` is an unknown dimension."""
    vt = MIL_pb2.ValueType()
    t = vt.tensorType
    t.dataType = DT.Value(dtype)
    t.rank = len(dims)
    for d in dims:
        dim = t.dimensions.add()
        if d is None:
            dim.unknown.variadic = False
        else:
            dim.constant.size = d
    return vt


def literal(array, dtype="FLOAT32"):
    """An immediate Value holding `array` as coremltools writes it (fp16 as bytes)."""
    array = np.asarray(array)
    value = MIL_pb2.Value()
    value.type.CopyFrom(ttype(array.shape, dtype))
    flat = array.reshape(-1)
    tensor = value.immediateValue.tensor
    if dtype == "FLOAT16":
        tensor.bytes.values = flat.astype(np.float16).tobytes()
    else:
        getattr(tensor, KINDS[dtype]).values.extend(flat.tolist())
    return value


class Program:
    """One function `main` with the given inputs; ops appended to `block` (the main block unless given)."""

    def __init__(self, inputs=None, opset="CoreML7"):
        self.spec = Model_pb2.Model(specificationVersion=8)
        self.function = self.spec.mlProgram.functions["main"]
        self.function.opset = opset
        for name, vt in (inputs if inputs is not None else {"x": ttype([1, 4])}).items():
            self.function.inputs.add(name=name).type.CopyFrom(vt)
        self.block = self.function.block_specializations[opset]

    def op(self, op_type, name, out_type=None, block=None, **inputs):
        """Append `op_type(**inputs) -> name`; an input is a value name, a list of them, or a Value (inline)."""
        op = (block or self.block).operations.add(type=op_type)
        for param, source in inputs.items():
            for s in source if isinstance(source, list) else [source]:
                binding = op.inputs[param].arguments.add()
                if isinstance(s, str):
                    binding.name = s
                else:
                    binding.value.CopyFrom(s)
        if name is not None:
            op.outputs.add(name=name).type.CopyFrom(out_type if out_type is not None else ttype([1, 4]))
        return op

    def const(self, name, array, dtype="FLOAT32", block=None):
        value = literal(array, dtype)
        op = self.op("const", name, value.type, block=block)
        op.attributes["val"].CopyFrom(value)
        return op

    def output(self, *names):
        self.block.outputs.extend(names)
        return self


def problem(program):
    return program_problem(program.spec)


def rms_program(n=4, rows=1, eps=1e-5, gamma=None, dtype="FLOAT32", with_gamma=True, rsqrt_eps=None, mean=None):
    """x * rsqrt(mean(x*x, axis 1) + eps) * gamma over x: (rows, n), every constant immediate. `mean=(op, c)`
    spells the mean as reduce_sum followed by mul/real_div(c); `rsqrt_eps` gives rsqrt its own epsilon."""
    p = Program({"x": ttype([rows, n], dtype)})
    full, reduced = ttype([rows, n], dtype), ttype([rows, 1], dtype)
    p.op("mul", "sq", full, x="x", y="x")
    p.const("axes", np.array([1], np.int32), "INT32")
    p.const("keep", np.bool_(True), "BOOL")
    if mean is None:
        p.op("reduce_mean", "ms", reduced, x="sq", axes="axes", keep_dims="keep")
    else:
        p.op("reduce_sum", "s", reduced, x="sq", axes="axes", keep_dims="keep")
        p.const("scale", np.float32(mean[1]), dtype)
        p.op(mean[0], "ms", reduced, x="s", y="scale")
    p.const("eps", np.float32(eps), dtype)
    p.op("add", "v", reduced, x="ms", y="eps")
    if rsqrt_eps is None:
        p.op("rsqrt", "r", reduced, x="v")
    else:
        p.const("r_eps", np.float32(rsqrt_eps), dtype)
        p.op("rsqrt", "r", reduced, x="v", epsilon="r_eps")
    p.op("mul", "y", full, x="x", y="r")
    if not with_gamma:
        return p.output("y")
    p.const("g", np.ones(n) if gamma is None else np.asarray(gamma), dtype)
    p.op("mul", "out", full, x="y", y="g")
    return p.output("out")


# -- every real model passes -----------------------------------------------------------------------------------------

ALL_FIXTURES = sorted(glob.glob(os.path.join(FIXTURES, "*.mlpackage")) + glob.glob(os.path.join(FIXTURES, "real", "*.mlpackage")))


def test_fixture_list_is_complete():
    assert len(ALL_FIXTURES) > 100  # the synthetic fixtures and fixtures/real/ (92 PyTorch conversions)


@pytest.mark.parametrize("path", ALL_FIXTURES, ids=lambda p: os.path.relpath(p, FIXTURES))
def test_every_fixture_passes(path):
    package = read_package(path)
    try:
        validate_program(package.spec, package.model_path)  # raises on any problem
        assert program_problem(package.spec) is None
    finally:
        getattr(package, "close", lambda: None)()


def test_the_builder_makes_valid_programs():
    assert problem(rms_program()) is None


# -- def before use --------------------------------------------------------------------------------------------------

def test_undefined_value():
    p = Program()
    p.op("cast", "c", x="nowhere")
    with pytest.raises(BadInputError) as e:
        validate_program(p.output("c").spec, "/m/model.mlmodel")
    assert e.value.path == "/m/model.mlmodel"
    assert e.value.problem == "function 'main': op 'c' (cast) reads 'nowhere', which is not defined before it"
    assert str(e.value) == "/m/model.mlmodel: function 'main': op 'c' (cast) reads 'nowhere', which is not defined before it"


def test_op_reading_its_own_output():
    p = Program()
    p.op("add", "a", x="x", y="a")
    assert problem(p.output("a")) == "function 'main': op 'a' (add) reads 'a', which is not defined before it"


def test_two_casts_feeding_each_other():
    p = Program()
    p.op("cast", "cast_3", x="x_1")
    p.op("cast", "x_1", x="cast_3")
    assert problem(p.output("x_1")) == "function 'main': op 'cast_3' (cast) reads 'x_1', which is not defined before it"


def test_gamma_computed_from_itself():
    p = rms_program()
    p.block.operations[-1].inputs["y"].arguments[0].name = "g2"
    gamma = p.block.operations.add(type="add")
    gamma.inputs["x"].arguments.add().name = "g2"
    gamma.inputs["y"].arguments.add().name = "g"
    gamma.outputs.add(name="g2").type.CopyFrom(ttype([4]))
    assert problem(p) == "function 'main': op 'out' (mul) reads 'g2', which is not defined before it"


def test_use_before_definition_in_the_same_block():
    p = Program()
    p.op("relu", "b", x="a")
    p.op("relu", "a", x="x")
    assert problem(p.output("b")) == "function 'main': op 'b' (relu) reads 'a', which is not defined before it"


def test_variadic_and_inline_bindings():
    p = Program()
    p.const("axis", np.int32(1), "INT32")
    p.op("concat", "c", ttype([1, 8]), values=["x", "x"], axis="axis", interleave=literal(np.bool_(False), "BOOL"))
    assert problem(p.output("c")) is None
    p.op("concat", "d", ttype([1, 8]), values=["x", "later"], axis="axis")
    assert problem(p) == "function 'main': op 'd' (concat) reads 'later', which is not defined before it"


def test_empty_binding():
    p = Program()
    op = p.op("relu", "r")
    op.inputs["x"].arguments.add()
    assert problem(p.output("r")) == "function 'main': op 'r' (relu) input 'x': binding 0 is empty"


def test_op_name_attribute_names_the_op():
    p = Program()
    op = p.op("cast", "out_value", x="nowhere")
    op.attributes["name"].CopyFrom(literal(np.array("cast_7"), "STRING"))
    assert problem(p.output("out_value")) == "function 'main': op 'cast_7' (cast) reads 'nowhere', which is not defined before it"


# -- nested blocks ---------------------------------------------------------------------------------------------------

def cond_program(then_reads="x", else_output="e"):
    p = Program()
    p.const("pred", np.bool_(True), "BOOL")
    cond = p.op("cond", "c", pred="pred")
    then_block, else_block = cond.blocks.add(), cond.blocks.add()
    p.op("relu", "t", block=then_block, x=then_reads)
    then_block.outputs.append("t")
    p.op("relu", "e", block=else_block, x="x")
    else_block.outputs.append(else_output)
    return p.output("c")


def test_nested_block_sees_enclosing_values():
    assert problem(cond_program()) is None


def test_nested_block_cannot_see_a_sibling_block():
    p = cond_program()
    p.block.operations[-1].blocks[1].operations[0].inputs["x"].arguments[0].name = "t"
    assert problem(p) == "function 'main': op 'e' (relu) reads 't', which is not defined before it"


def test_nested_block_cannot_see_its_own_op_output():
    assert problem(cond_program(then_reads="c")) == "function 'main': op 't' (relu) reads 'c', which is not defined before it"


def test_values_of_a_nested_block_are_gone_after_it():
    p = cond_program()
    p.op("relu", "after", x="t")
    assert problem(p) == "function 'main': op 'after' (relu) reads 't', which is not defined before it"


def test_nested_block_output_undefined():
    assert problem(cond_program(else_output="nowhere")) == "function 'main': op 'c' (cond): block output 'nowhere' is not defined"


def test_function_output_undefined():
    assert problem(Program().output("nowhere")) == "function 'main': output 'nowhere' is not defined"


def while_program(body_input="i_1", cond_input="i_1"):
    p = Program()
    p.const("zero", np.int32(0), "INT32")
    loop = p.op("while_loop", "w", ttype([], "INT32"), loop_vars=["zero"])
    cond, body = loop.blocks.add(), loop.blocks.add()
    cond.inputs.add(name=cond_input).type.CopyFrom(ttype([], "INT32"))
    p.op("less", "lt", ttype([], "BOOL"), block=cond, x=cond_input, y="zero")
    cond.outputs.append("lt")
    body.inputs.add(name=body_input).type.CopyFrom(ttype([], "INT32"))
    p.op("add", "next", ttype([], "INT32"), block=body, x=body_input, y="zero")
    body.outputs.append("next")
    return p.output("w")


def test_while_loop_blocks_may_share_input_names():
    """coremltools gives a while_loop's cond and body blocks the same input names (fixtures/while_body_*)."""
    assert problem(while_program()) is None
    assert problem(while_program(body_input="i_2")) is None


def test_block_input_cannot_shadow_a_value_in_scope():
    assert problem(while_program(body_input="zero")) == "function 'main': op 'w' (while_loop): block input 'zero' is already defined"


# -- each name once ---------------------------------------------------------------------------------------------------

def test_value_defined_twice():
    p = Program()
    p.op("relu", "a", x="x")
    p.op("relu", "a", x="x")
    assert problem(p.output("a")) == "function 'main': op 'a' (relu) defines 'a', which is already defined"


def test_op_output_named_like_a_function_input():
    p = Program()
    p.op("relu", "x", x="x")  # reads the input x, then redefines it
    assert problem(p.output("x")) == "function 'main': op 'x' (relu) defines 'x', which is already defined"


def test_name_defined_in_a_nested_block_and_again_outside():
    p = cond_program()
    p.op("relu", "t", x="x")
    assert problem(p) == "function 'main': op 't' (relu) defines 't', which is already defined"


def test_function_input_defined_twice():
    p = Program({"x": ttype([1, 4])})
    p.function.inputs.add(name="x").type.CopyFrom(ttype([1, 4]))
    assert problem(p.output("x")) == "function 'main': input 'x' is defined twice"


# -- ops and outputs -------------------------------------------------------------------------------------------------

def test_op_without_outputs():
    p = Program()
    p.op("relu", None, x="x")
    assert problem(p.output("x")) == "function 'main': op 'relu' (relu) has no outputs"


def test_write_state_has_no_outputs():
    p = Program({"s": MIL_pb2.ValueType(stateType=MIL_pb2.StateType(wrappedType=ttype([1, 4]))), "x": ttype([1, 4])}, opset="CoreML8")
    p.op("write_state", None, input="s", data="x")
    p.op("read_state", "r", input="s")
    assert problem(p.output("r")) is None


def test_no_functions():
    spec = Model_pb2.Model(specificationVersion=8)
    spec.mlProgram.SetInParent()
    with pytest.raises(BadInputError) as e:
        validate_program(spec, "m")
    assert e.value.problem == "the ML program has no functions"


def test_not_an_ml_program_is_left_to_the_reader():
    spec = Model_pb2.Model(specificationVersion=4)
    spec.neuralNetwork.SetInParent()
    assert program_problem(spec) is None


# -- types -----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: setattr(t, "rank", 3), "rank 3 but 2 dimensions"),
        (lambda t: setattr(t, "rank", 2**62), "rank 4611686018427387904 but 2 dimensions"),
        (lambda t: setattr(t, "dataType", 999), "unknown data type 999"),
        (lambda t: setattr(t, "dataType", 0), "unknown data type 0"),
        (lambda t: setattr(t.dimensions[1].constant, "size", 2**64 - 1), "dimension 1 has size 18446744073709551615, outside 0 .. 2147483647"),
        (lambda t: setattr(t.dimensions[1].constant, "size", 2**31), "dimension 1 has size 2147483648, outside 0 .. 2147483647"),
        (lambda t: t.dimensions[0].Clear(), "dimension 0 is neither constant nor unknown"),
    ],
)
def test_bad_tensor_types(edit, message):
    p = Program()
    op = p.op("relu", "r", x="x")
    edit(op.outputs[0].type.tensorType)
    assert problem(p.output("r")) == f"function 'main': op 'r' (relu) output 'r': {message}"
    q = Program()
    edit(q.function.inputs[0].type.tensorType)
    assert problem(q.output("x")) == f"function 'main': input 'x': {message}"


def test_sizes_up_to_int32_max_and_zero_are_accepted():
    """MIL sizes are int32. Size 0 is valid: coremltools converts and saves TensorSpec(shape=(0, 3)) as a
    constant dimension of size 0 and its proto loader reads it back, so it is not refused."""
    p = Program({"x": ttype([0, MAX_DIM, None])})
    p.op("relu", "r", ttype([0, MAX_DIM, None]), x="x")
    assert problem(p.output("r")) is None


def test_empty_type():
    p = Program({"x": MIL_pb2.ValueType()})
    assert problem(p.output("x")) == "function 'main': input 'x': has no type"


def test_block_input_type():
    p = while_program()
    p.block.operations[-1].blocks[1].inputs[0].type.tensorType.rank = 5
    assert problem(p) == "function 'main': op 'w' (while_loop): block input 'i_1': rank 5 but 0 dimensions"


def test_state_list_tuple_and_dictionary_types_are_accepted():
    state = MIL_pb2.ValueType(stateType=MIL_pb2.StateType(wrappedType=ttype([2, 3], "FLOAT16")))
    listed = MIL_pb2.ValueType(listType=MIL_pb2.ListType(type=ttype([4])))
    listed.listType.length.unknown.variadic = False
    pair = MIL_pb2.ValueType(tupleType=MIL_pb2.TupleType(types=[ttype([1]), ttype([2], "INT32")]))
    mapping = MIL_pb2.ValueType(dictionaryType=MIL_pb2.DictionaryType(keyType=ttype([], "STRING"), valueType=ttype([], "FLOAT64")))
    p = Program({"s": state, "l": listed, "t": pair, "d": mapping})
    assert problem(p.output("s", "l", "t", "d")) is None


def test_state_must_wrap_a_tensor():
    bad = MIL_pb2.ValueType(stateType=MIL_pb2.StateType(wrappedType=MIL_pb2.ValueType(listType=MIL_pb2.ListType(type=ttype([1])))))
    assert problem(Program({"s": bad}).output("s")) == "function 'main': input 's': state type does not wrap a tensor"
    inner = MIL_pb2.ValueType(stateType=MIL_pb2.StateType(wrappedType=ttype([1, 2**33])))
    assert problem(Program({"s": inner}).output("s")) == "function 'main': input 's': dimension 1 has size 8589934592, outside 0 .. 2147483647"


def test_list_element_type_is_checked():
    listed = MIL_pb2.ValueType(listType=MIL_pb2.ListType(type=ttype([4], "FLOAT32")))
    listed.listType.type.tensorType.rank = 2
    assert problem(Program({"l": listed}).output("l")) == "function 'main': input 'l': rank 2 but 1 dimensions"


# -- constants and literals ------------------------------------------------------------------------------------------

def test_const_without_val():
    p = Program()
    op = p.const("c", np.zeros(4))
    del op.attributes["val"]
    assert problem(p.output("c")) == "function 'main': op 'c' (const) has no 'val' attribute"


def test_immediate_value_with_fewer_elements_than_its_type():
    p = Program()
    op = p.const("c", np.zeros(4))
    del op.attributes["val"].immediateValue.tensor.floats.values[3]
    assert problem(p.output("c")) == "function 'main': op 'c' (const): immediate value holds 3 elements, its type says 4"


def test_immediate_value_with_more_elements_than_its_type():
    p = Program()
    op = p.const("c", np.int32(1), "INT32")
    op.attributes["val"].immediateValue.tensor.ints.values.extend([2, 3])
    assert problem(p.output("c")) == "function 'main': op 'c' (const): immediate value holds 3 elements, its type says 1"


def test_immediate_bytes_of_the_wrong_length():
    p = Program()
    op = p.const("c", np.ones(4), "FLOAT16")
    op.attributes["val"].immediateValue.tensor.bytes.values = b"\x00\x3c\x00"
    assert problem(p.output("c")) == "function 'main': op 'c' (const): immediate value holds 3 bytes, its type says 4 elements of fp16 (8 bytes)"


def test_immediate_value_missing_entirely():
    p = Program()
    op = p.const("c", np.zeros(2))
    op.attributes["val"].ClearField("immediateValue")
    assert problem(p.output("c")) == (
        "function 'main': op 'c' (const): value holds neither an immediate value nor a weight-file reference"
    )


def test_inline_literal_is_checked_like_a_const():
    value = literal(np.zeros(4))
    del value.immediateValue.tensor.floats.values[0]
    p = Program()
    p.op("add", "a", x="x", y=value)
    assert problem(p.output("a")) == "function 'main': op 'a' (add) input 'y': immediate value holds 3 elements, its type says 4"
    bad_type = literal(np.zeros(4))
    bad_type.type.tensorType.dataType = 77
    q = Program()
    q.op("add", "a", x="x", y=bad_type)
    assert problem(q.output("a")) == "function 'main': op 'a' (add) input 'y' value: unknown data type 77"


def test_const_value_type_is_checked():
    p = Program()
    op = p.const("c", np.zeros(4))
    op.attributes["val"].type.tensorType.dimensions[0].constant.size = 2**40
    op.outputs[0].type.tensorType.dimensions[0].unknown.variadic = False
    assert problem(p.output("c")) == "function 'main': op 'c' (const) value: dimension 0 has size 1099511627776, outside 0 .. 2147483647"


def test_const_output_type_must_be_its_value_type():
    p = Program()
    op = p.const("c", np.zeros(4))
    op.outputs[0].type.tensorType.dimensions[0].constant.size = 5
    assert problem(p.output("c")) == "function 'main': op 'c' (const): output 'c' is declared fp32[5], its value is fp32[4]"
    q = Program()
    op = q.const("c", np.zeros(4))
    op.outputs[0].type.tensorType.dimensions[0].unknown.variadic = False  # an unknown size admits any value
    assert problem(q.output("c")) is None


def test_weight_file_value_needs_constant_dimensions():
    p = Program()
    op = p.op("const", "w", ttype([None]))
    op.attributes["val"].type.CopyFrom(ttype([None]))
    op.attributes["val"].blobFileValue.fileName = "@model_path/weights/weight.bin"
    op.attributes["val"].blobFileValue.offset = 64
    assert problem(p.output("w")) == "function 'main': op 'w' (const): weight-file value needs a tensor type with constant dimensions"


def test_nothing_is_allocated_from_declared_shapes():
    """A const declaring 8 dimensions of 2**31-1 (about 2**248 elements) with one float: refused by comparing
    counts as Python ints, without building anything of that size (and without int64 wrap-around)."""
    p = Program()
    op = p.const("c", np.float32(1.0))
    huge = ttype([MAX_DIM] * 8)
    op.attributes["val"].type.CopyFrom(huge)
    op.outputs[0].type.CopyFrom(huge)
    tracemalloc.start()
    try:
        message = problem(p.output("c"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert message == f"function 'main': op 'c' (const): immediate value holds 1 elements, its type says {MAX_DIM**8}"
    assert peak < 1 << 20


def test_linear_time():
    """Validation time grows linearly with the program: 8x the ops take well under 8x squared the time."""

    def chain(n):
        p = Program()
        previous = "x"
        for k in range(n):
            p.op("relu", f"r{k}", x=previous)
            previous = f"r{k}"
        return p.output(previous)

    small, large = chain(2000), chain(16000)
    timings = []
    for program in (small, large):
        start = time.perf_counter()
        assert problem(program) is None
        timings.append(time.perf_counter() - start)
    assert timings[1] < 8 * 4 * timings[0] + 0.05  # linear is 8x; quadratic would be 64x
