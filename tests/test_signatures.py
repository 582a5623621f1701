"""Op signatures (mlopt/graph/signatures.py, op_signatures.json): the committed table is what coremltools' registry
says today, every program coremltools writes passes, and each way an op can break its signature is refused with
one line naming the function, the op and the problem."""

import os
import subprocess
import sys

import numpy as np

import coremltools as ct
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import types

from conftest import ROOT
from mlopt.graph.signature_table import TABLE, build_table, render
from mlopt.graph.signatures import signature
from mlopt.package import read_package
from mlopt.package.proto import MIL_pb2
from test_validate import Program, literal, problem, ttype


def test_committed_table_is_what_coremltools_registry_says():
    """Regenerated in memory from the installed coremltools: a changed signature fails here, not silently. mlopt's
    own fused ops (registered in the same registry by mlopt.coreml, lowered before anything is saved) stay out."""
    import mlopt.coreml  # noqa: F401

    with open(TABLE, encoding="utf-8") as f:
        committed = f.read()
    assert render(build_table()) == committed, "run `python -m mlopt.graph.signature_table` and commit the table"


def test_table_holds_the_loaders_choice_of_version():
    # rsqrt takes x and an optional epsilon in x's float type; layer_norm gains a separate gamma/beta/eps domain in iOS17
    assert signature("rsqrt", "CoreML5") == {
        "x": {"required": True, "kind": "tensor", "dtypes": ["FLOAT16", "FLOAT32"], "domain": "T"},
        "epsilon": {"required": False, "kind": "tensor", "dtypes": ["FLOAT16", "FLOAT32"], "domain": "T"},
    }
    assert signature("layer_norm", "CoreML7")["epsilon"]["domain"] == "U"
    assert signature("read_state", "CoreML7") is None and signature("read_state", "CoreML8") is not None
    assert signature("write_state", "CoreML8")["input"]["kind"] == "state"
    assert signature("concat", "CoreML5")["values"]["kind"] == "tuple"
    assert signature("constexpr_lut_to_dense", "CoreML5") is None
    assert signature("constexpr_blockwise_shift_scale", "CoreML9") == signature("constexpr_blockwise_shift_scale", "CoreML8")


def relu_of(p, **inputs):
    p.op("relu", "y", **inputs)
    return problem(p.output("y"))


def test_missing_required_input():
    p = Program()
    p.op("rsqrt", "r")
    assert problem(p.output("r")) == "function 'main': op 'r' (rsqrt) lacks its required input 'x'"


def test_input_the_op_does_not_take():
    assert relu_of(Program(), x="x", alpha="x") == "function 'main': op 'y' (relu) has an input 'alpha' that relu does not take (it takes x)"


def test_unknown_op_type_and_op_from_a_later_opset():
    p = Program()
    p.op("fancy_norm", "y", x="x")
    assert problem(p.output("y")) == "function 'main': op 'y' (fancy_norm) has an unknown op type 'fancy_norm'"
    p = Program({"s": MIL_pb2.ValueType(stateType=MIL_pb2.StateType(wrappedType=ttype([1, 4])))}, opset="CoreML5")
    p.op("read_state", "r", input="s")
    assert problem(p.output("r")) == (
        "function 'main': op 'r' (read_state) is not an op of opset CoreML5 (iOS15); it needs CoreML8 (iOS18) or later"
    )


def test_input_dtype_outside_the_domain():
    p = Program({"x": ttype([1, 4], "INT32")})
    assert relu_of(p, x="x") == "function 'main': op 'y' (relu) input 'x' is int32; relu takes fp16 or fp32 there"
    p = Program()
    p.const("s", np.array("fuzz"), "STRING")
    p.op("rsqrt", "r", x="x", epsilon="s")
    assert problem(p.output("r")) == "function 'main': op 'r' (rsqrt) input 'epsilon' is string; rsqrt takes fp16 or fp32 there"


def test_inputs_of_one_domain_share_a_dtype():
    p = Program({"x": ttype([1, 4]), "h": ttype([1, 4], "FLOAT16")})
    p.op("add", "y", x="x", y="h")
    assert problem(p.output("y")) == "function 'main': op 'y' (add) inputs 'x' (fp32) and 'y' (fp16) must have one dtype in add"


def test_kind_and_arity():
    p = Program({"l": MIL_pb2.ValueType(listType=MIL_pb2.ListType(type=ttype([4])))})
    assert relu_of(p, x="l") == "function 'main': op 'y' (relu) input 'x' is a list; relu takes a tensor there"
    assert relu_of(Program(), x=["x", "x"]) == "function 'main': op 'y' (relu) input 'x' binds 2 values; relu takes one there"
    p = Program()
    p.op("list_length", "n", ttype([], "INT32"), ls="x")
    assert problem(p.output("n")) == "function 'main': op 'n' (list_length) input 'ls' is a tensor; list_length takes a list there"


def test_tuple_inputs_take_any_number_of_values_and_inline_values_are_typed():
    p = Program()
    p.const("axis", np.int32(1), "INT32")
    p.op("concat", "c", ttype([1, 12]), values=["x", "x", "x"], axis="axis")
    assert problem(p.output("c")) is None
    p = Program()
    p.op("rsqrt", "r", x="x", epsilon=literal(np.float32(1e-5)))
    assert problem(p.output("r")) is None
    p = Program()
    p.op("rsqrt", "r", x="x", epsilon=literal(np.int32(1), "INT32"))
    assert problem(p.output("r")) == "function 'main': op 'r' (rsqrt) input 'epsilon' is int32; rsqrt takes fp16 or fp32 there"


# --- what coremltools writes passes ------------------------------------------------------------------------------

def _save(prog, tmp_path, target, name="p"):
    model = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=target, skip_model_load=True,
                       compute_precision=ct.precision.FLOAT32)
    path = str(tmp_path / f"{name}.mlpackage")
    model.save(path)
    return path


def test_control_flow_and_list_ops_coremltools_writes(tmp_path):
    """while_loop with a list written in its body, cond, list ops: read back without a problem."""

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4))], opset_version=ct.target.iOS15)
    def prog(x):
        ls = mb.make_list(init_length=3, elem_shape=[1, 4], dtype="fp32")

        def cond(i, lst):
            return mb.less(x=i, y=np.int32(3))

        def body(i, lst):
            return mb.add(x=i, y=np.int32(1)), mb.list_write(ls=lst, index=i, value=x)

        _, filled = mb.while_loop(_cond=cond, _body=body, loop_vars=(np.int32(0), ls))
        stacked = mb.list_gather(ls=filled, indices=np.array([0, 1, 2], np.int32))
        n = mb.list_length(ls=filled)
        read = mb.list_read(ls=filled, index=np.int32(1))
        branch = mb.cond(pred=mb.greater(x=n, y=np.int32(2)), _true_fn=lambda: mb.relu(x=read), _false_fn=lambda: mb.sigmoid(x=read))
        return mb.reduce_sum(x=stacked, axes=[0]), branch

    package = read_package(_save(prog, tmp_path, ct.target.iOS15))
    ops = {op.type for op in package.spec.mlProgram.functions["main"].block_specializations["CoreML5"].operations}
    assert {"make_list", "while_loop", "list_gather", "list_length", "list_read", "cond"} <= ops


def test_state_ops_coremltools_writes(tmp_path):
    """An iOS18 stateful program: coremltools writes read_state and write_state."""

    @mb.program(input_specs=[mb.StateTensorSpec((1, 4), dtype=types.fp16), mb.TensorSpec((1, 4), dtype=types.fp16)],
                opset_version=ct.target.iOS18)
    def prog(state, x):
        value = mb.read_state(input=state)
        mb.coreml_update_state(state=state, value=mb.add(x=value, y=x))
        return mb.mul(x=mb.read_state(input=state), y=x)

    model = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18, skip_model_load=True,
                       compute_precision=ct.precision.FLOAT16)
    path = str(tmp_path / "state.mlpackage")
    model.save(path)
    package = read_package(path)
    ops = [op.type for op in package.spec.mlProgram.functions["main"].block_specializations["CoreML8"].operations]
    assert "write_state" in ops and "read_state" in ops


def test_every_fixture_passes():
    """Every committed package (converted by coremltools from torch, hand-built MIL, compressed weights, multifunction
    and stateful models) reads without a signature problem."""
    import glob

    paths = sorted(glob.glob(os.path.join(ROOT, "fixtures", "**", "*.mlpackage"), recursive=True))
    assert len(paths) > 250
    for path in paths:
        read_package(path)  # raises BadInputError on any problem


def test_cli_reads_the_table_without_coremltools():
    code = (
        "import sys; from mlopt.cli import main; rc = main(['inspect', sys.argv[1]]); "
        "assert 'coremltools' not in sys.modules, 'coremltools imported'; sys.exit(rc)"
    )
    fixture = os.path.join(ROOT, "fixtures", "hf_fp16_ios17.mlpackage")
    result = subprocess.run([sys.executable, "-c", code, fixture], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
