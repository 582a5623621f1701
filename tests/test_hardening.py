"""Hardening in depth: whatever a program holds, optimize ends with a report or a BadInputError - no crash, no
hang, no unbounded memory, no numpy warnings on stderr. Programs come from the MIL builder in test_validate.py
(every name, type and literal under the test's control) or from fixture specs edited with MIL_pb2."""

import math
import os
import signal
import tracemalloc
import warnings

import numpy as np
import pytest

from conftest import fixture_path, record_fed
from mlopt.errors import BadInputError
from mlopt.graph import SpecGraph
from mlopt.graph.validate import program_problem
from mlopt.graph.values import decode_value
from mlopt.numerics import selfcheck
from mlopt.numerics.inputs import MAX_ELEMENTS, InputTooLarge, random_inputs
from mlopt.numerics.interpreter import Evaluator, InterpreterError
from mlopt.engine import optimize_spec, provenance_key
from mlopt.package.proto import MIL_pb2, Model_pb2
from mlopt.rules import find_candidates
from mlopt.rules.rms_norm import RULE as RMS_NORM
from mlopt.patterns.walk import (
    cast_ancestry, casts_between, casts_up_to, follow, producer_through_casts, same_tensor, unwrap_lossless,
)
from test_validate import Program, literal, rms_program, ttype

MODEL_DIR = os.path.join("Data", "com.apple.CoreML")
UNCHECKED = "not rewritten (--no-verify rewrites without the check)"


@pytest.fixture
def deadline():
    """Fail (instead of hanging the suite) if the test body runs for more than 10 s."""

    def expire(signum, frame):
        raise TimeoutError("did not terminate")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def chains(spec, **kwargs):
    """[(status, reason)] of every chain optimize_spec reports, with every warning an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reports = optimize_spec(spec, **kwargs)
    return [(c.status, c.reason) for f in reports for c in f.chains]


def fixture_spec(name):
    """(spec, model_dir) of a fixture, parsed straight from its model file."""
    model_dir = os.path.join(fixture_path(name), MODEL_DIR)
    with open(os.path.join(model_dir, "model.mlmodel"), "rb") as f:
        return Model_pb2.Model.FromString(f.read()), model_dir


FP32 = literal(np.array("fp32"), "STRING")


# -- 2. walks terminate on cyclic graphs (built directly, bypassing validation) ----------------------------------------

def cyclic_view():
    """a = cast(b), b = cast(a): a cast cycle; r reads a; g = add(g, c): a gamma computed from itself."""
    p = Program()
    p.op("cast", "a", x="b", dtype=FP32)
    p.op("cast", "b", x="a", dtype=FP32)
    p.op("relu", "r", x="a")
    p.const("c", np.ones(4))
    p.op("add", "g", ttype([4]), x="g", y="c")
    p.op("add", "h", ttype([4]), x="c", y="g")
    return SpecGraph("main", p.output("r", "h").function)


def test_upward_walks_stop_on_a_cast_cycle(deadline):
    view = cyclic_view()
    assert cast_ancestry(view, "a") == ["a", "b"]
    assert cast_ancestry(view, "b") == ["b", "a"]
    assert cast_ancestry(view, "r") == ["r"]
    assert view.op_name(producer_through_casts(view, "a")) == "b"
    assert same_tensor(view, "a", "b")
    assert [view.op_name(op) for op in casts_up_to(view, "a", {"x"})] == ["a", "b"]
    assert unwrap_lossless(view, "a") == "b"
    assert [view.op_name(op) for op in casts_between(view, "a", "nowhere")] == ["a", "b"]


def test_downward_walk_stops_on_a_cast_cycle(deadline):
    view = cyclic_view()
    assert follow(view, "a", ("mul",)) is None
    step = follow(view, "b", ("relu",))
    assert view.op_name(step.op) == "r" and step.via == "a" and [view.op_name(c) for c in step.casts] == ["a"]


def test_constant_expression_through_a_cycle(deadline):
    view = cyclic_view()
    assert view.is_constant_expr("c")
    assert not view.is_constant_expr("g")  # depends on itself: never constant
    assert not view.is_constant_expr("h")
    assert not view.is_constant_expr("a")


def test_matcher_terminates_on_a_cast_cycle_above_x(deadline):
    """x is a cast of a cast of itself (the upward walks): the matcher reports and returns."""
    p = rms_program()
    for binding in p.block.operations[0].inputs["x"].arguments:
        binding.name = "xa"  # sq = mul(xa, xa); the chain still scales x
    for binding in p.block.operations[0].inputs["y"].arguments:
        binding.name = "xa"
    p.op("cast", "xa", x="xb", dtype=FP32)
    p.op("cast", "xb", x="xa", dtype=FP32)
    (candidate,) = find_candidates(SpecGraph("main", p.function))
    assert candidate.reason == "squares one tensor and scales another"


def test_matcher_terminates_on_a_cast_cycle_below_the_chain(deadline):
    """The normalised value feeds a cast whose output, through a second cast, feeds the first again (the
    downward walk towards gamma): the matcher stops at the first cast it has seen."""
    p = rms_program(with_gamma=False)
    p.block.outputs[:] = ["sq"]
    first = p.op("cast", "c1", x="y", dtype="c2")
    p.op("cast", "c2", x="c1", dtype=FP32)
    assert first.inputs["dtype"].arguments[0].name == "c2"
    (candidate,) = find_candidates(SpecGraph("main", p.function))
    assert candidate.reason is None and candidate.match.operands["gamma"] is None and candidate.match.output == "c1"


def test_evaluator_refuses_a_cycle(deadline):
    with pytest.raises(InterpreterError, match=r"^value 'a' depends on itself$"):
        Evaluator(cyclic_view(), None).evaluate(["a"], {})


def test_optimize_refuses_a_cyclic_spec():
    p = Program()
    p.op("cast", "a", x="b", dtype=FP32)
    p.op("cast", "b", x="a", dtype=FP32)
    with pytest.raises(BadInputError) as e:
        optimize_spec(p.output("b").spec, model_path="/p/model.mlmodel")
    assert str(e.value) == "/p/model.mlmodel: function 'main': op 'a' (cast) reads 'b', which is not defined before it"


# -- 4. the self-check's memory budget -----------------------------------------------------------------------------------

def bomb_fixture():
    """textbook_eps_fp32_ios17 (x: (1, 4, 16), no gamma) with every size 16 declared as 10**8."""
    spec, model_dir = fixture_spec("textbook_eps_fp32_ios17")
    function = spec.mlProgram.functions["main"]
    types = [i.type for i in function.inputs]
    for op in function.block_specializations[function.opset].operations:
        types += [o.type for o in op.outputs if op.type != "const"]  # consts keep their 16 values
    for vt in types:
        for d in vt.tensorType.dimensions:
            if d.WhichOneof("dimension") == "constant" and d.constant.size == 16:
                d.constant.size = 10**8
    return spec, model_dir


@pytest.mark.parametrize("build", ["builder", "fixture"])
def test_a_normalised_size_of_1e8_is_left_alone_in_bounded_memory(build):
    spec, model_dir = (rms_program(n=10**8, with_gamma=False).spec, None) if build == "builder" else bomb_fixture()
    assert len(spec.SerializeToString()) < 4096
    tracemalloc.start()
    try:
        result = chains(spec, model_dir=model_dir)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result == [("left alone", f"normalised size 100000000 exceeds the self-check's budget of 1048576 elements; {UNCHECKED}")]
    assert peak < 20 << 20  # was ~6 GB
    assert selfcheck.BUDGET == 2**20


def test_without_the_check_the_large_chain_is_rewritten():
    assert chains(rms_program(n=10**8, with_gamma=False).spec, verify=False) == [("rewritten", None)]


def measured(reports):
    return [(c.status, c.error, c.original_error) for f in reports for c in f.chains]


def test_rows_are_split_by_magnitude_within_the_budget(monkeypatch):
    """decoder_fp16_ios17 normalises 16 values in 5 chains. With room for 3 rows a batch, each magnitude's rows
    get a batch of their own (zero row + 2, then 2, then 2): the same random rows, the same measured errors."""
    spec, model_dir = fixture_spec("decoder_fp16_ios17")
    whole = optimize_spec(spec, model_dir=model_dir, dry_run=True)
    fed = record_fed(monkeypatch)
    monkeypatch.setattr(selfcheck, "BUDGET", 3 * 16)
    split = optimize_spec(spec, model_dir=model_dir, dry_run=True)
    assert fed == ([(1, 3, 16)] * 3 + [(1, 2, 16)] * 6) * 5  # 3 evaluations (float64, original, rewrite) a batch
    assert measured(split) == measured(whole)
    assert [s for s, _, _ in measured(split)] == ["would rewrite"] * 5


def test_rows_are_split_down_to_what_fits(monkeypatch):
    """Room for 2 rows: 4 batches (zero + 1, 1, 2, 2 rows); the check still passes every chain."""
    spec, model_dir = fixture_spec("decoder_fp16_ios17")
    fed = record_fed(monkeypatch)
    monkeypatch.setattr(selfcheck, "BUDGET", 2 * 16 + 15)
    split = optimize_spec(spec, model_dir=model_dir, dry_run=True)
    assert fed == ([(1, 2, 16)] * 3 + [(1, 1, 16)] * 3 + [(1, 2, 16)] * 6) * 5
    assert all(status == "would rewrite" and error < 1e-3 for status, error, _ in measured(split))


def test_one_row_over_the_budget(monkeypatch):
    monkeypatch.setattr(selfcheck, "BUDGET", 8)
    spec, model_dir = fixture_spec("textbook_eps_fp32_ios17")
    assert chains(spec, model_dir=model_dir) == [("left alone", f"normalised size 16 exceeds the self-check's budget of 8 elements; {UNCHECKED}")]


def test_whole_shape_over_the_budget(monkeypatch):
    """Where gamma varies off the normalised axes each magnitude is checked at the declared shape: that is what
    must fit."""
    monkeypatch.setattr(selfcheck, "BUDGET", 10)
    assert chains(rms_program(rows=3, gamma=np.array([[1.0], [2.0], [3.0]])).spec) == [
        ("left alone", "declared size 12 of 'x' (checked whole: gamma varies along an axis that is not normalised) "
                       f"exceeds the self-check's budget of 10 elements; {UNCHECKED}")
    ]


def test_gamma_broadcasting_the_input_beyond_the_budget(monkeypatch):
    """x: (8, 8) and gamma: (8, 1, 8), each within the budget, multiply to (8, 8, 8)."""
    monkeypatch.setattr(selfcheck, "BUDGET", 100)
    assert chains(rms_program(n=8, rows=8, gamma=np.ones((8, 1, 8))).spec) == [
        ("left alone", "gamma of shape [8, 1, 8] broadcasts the checked input to 512 elements, more than the "
                       f"self-check's budget of 100; {UNCHECKED}")
    ]


def test_gamma_computed_from_a_huge_constant():
    """gamma = slice of a const declared with 10**8 elements (in a weight file the check never gets to read)."""
    p = rms_program(with_gamma=False)
    p.block.outputs[:] = []
    big = p.op("const", "big", ttype([10**8]))
    big.attributes["val"].type.CopyFrom(ttype([10**8]))
    big.attributes["val"].blobFileValue.fileName = "@model_path/weights/weight.bin"
    big.attributes["val"].blobFileValue.offset = 64
    p.const("begin", np.array([0], np.int32), "INT32")
    p.const("end", np.array([4], np.int32), "INT32")
    p.op("slice_by_index", "g", ttype([4]), x="big", begin="begin", end="end")
    p.op("mul", "out", x="y", y="g")
    assert chains(p.output("out").spec) == [
        ("left alone", f"gamma is computed from 'big', which holds 100000000 elements, more than the self-check's budget of 1048576; {UNCHECKED}")
    ]


# -- 5. epsilon and gamma values ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["add", "rsqrt"])
@pytest.mark.parametrize("eps, shown", [(math.nan, "nan"), (math.inf, "inf"), (-math.inf, "-inf"), (-1e-5, "-1e-05")])
def test_invalid_epsilon(where, eps, shown):
    program = rms_program(eps=eps) if where == "add" else rms_program(rsqrt_eps=eps)
    assert chains(program.spec) == [("left alone", f"epsilon is {shown}: not a valid RMSNorm epsilon")]


def test_epsilons_that_cancel_out_are_still_refused():
    assert chains(rms_program(eps=1e-5, rsqrt_eps=-1e-6).spec) == [("left alone", "epsilon is -1e-06: not a valid RMSNorm epsilon")]


@pytest.mark.parametrize("dtype", ["FLOAT32", "FLOAT16"])
@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_gamma_with_inf_or_nan(capfd, dtype, bad):
    program = rms_program(gamma=[1.0, bad, 1.0, 1.0], dtype=dtype)
    found = chains(program.spec)
    if dtype == "FLOAT16" and np.isinf(bad):  # finite_mask also names the infinite constant, left alone
        found = [c for c in found if not c[1].startswith("InfiniteConstant: ")]
    assert found == [("left alone", f"gamma holds inf or nan: nothing to compare against; {UNCHECKED}")]
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


# -- 6. chains the interpreter cannot evaluate ----------------------------------------------------------------------------

def test_declared_and_computed_shapes_disagree():
    p = rms_program()
    ms = next(op for op in p.block.operations if op.outputs and op.outputs[0].name == "ms")
    ms.outputs[0].type.CopyFrom(ttype([1, 1, 1]))
    assert chains(p.spec) == [
        ("left alone", "could not be evaluated: op 'ms' (reduce_mean) computed shape [7, 1] for 'ms', declared [1, 1, 1]; not rewritten")
    ]


def test_gamma_that_does_not_broadcast():
    (status, reason), = chains(rms_program(gamma=[1.0, 2.0, 3.0]).spec)
    assert status == "left alone"
    assert reason.startswith("could not be evaluated: op 'out' (mul) failed: ValueError: operands could not be broadcast together")
    assert reason.endswith("; not rewritten")


def test_gamma_computed_by_an_op_the_interpreter_lacks():
    p = rms_program(with_gamma=False)
    p.block.outputs[:] = []
    p.const("w", np.ones(4))
    p.op("fuzz_op", "g", ttype([4]), x="w")
    p.op("mul", "out", x="y", y="g")
    spec = p.output("out").spec
    assert program_problem(spec) == "function 'main': op 'g' (fuzz_op) has an unknown op type 'fuzz_op'"  # on parse
    assert chains(spec, validated=True) == [  # handed to the engine all the same: left alone, no crash
        ("left alone", "could not be evaluated: no implementation of MIL op 'fuzz_op' (op 'g'); not rewritten")
    ]


def endless_loop(limit):
    """i = 0; while i < limit: i = i + 1 (one op in the cond block, one in the body)."""
    p = Program({"x": ttype([], "INT32")})
    p.const("limit", np.int32(limit), "INT32")
    p.const("one", np.int32(1), "INT32")
    loop = p.op("while_loop", "w", ttype([], "INT32"), loop_vars=["x"])
    cond, body = loop.blocks.add(), loop.blocks.add()
    for block in (cond, body):
        block.inputs.add(name="i").type.CopyFrom(ttype([], "INT32"))
    p.op("less", "more", ttype([], "BOOL"), block=cond, x="i", y="limit")
    cond.outputs.append("more")
    p.op("add", "next", ttype([], "INT32"), block=body, x="i", y="one")
    body.outputs.append("next")
    return SpecGraph("main", p.output("w").function)


def test_a_loop_that_does_not_end_is_stopped(monkeypatch, deadline):
    from mlopt.numerics import interpreter

    monkeypatch.setattr(interpreter, "MAX_LOOP_OPS", 1000)
    assert int(interpreter.run_function(endless_loop(400), None, {"x": np.int32(0)})["w"]) == 400
    with pytest.raises(InterpreterError, match=r"^while_loop 'w' did not finish: stopped after 501 iterations \(1002 ops\)$"):
        interpreter.run_function(endless_loop(10**9), None, {"x": np.int32(0)})


# -- the matcher on odd literals --------------------------------------------------------------------------------------------

def test_reduce_sum_divided_by_zero():
    assert chains(rms_program(mean=("real_div", 0.0)).spec) == [("left alone", "reduce_sum divided by 0, not 4")]


def test_reduce_sum_scaled_by_nan():
    assert chains(rms_program(mean=("mul", math.nan)).spec) == [("left alone", "reduce_sum scaled by nan, not 1/4")]


def test_reduce_sum_scaled_right_is_a_mean():
    assert chains(rms_program(mean=("mul", 0.25)).spec) == [("rewritten", None)]
    assert chains(rms_program(mean=("real_div", 4.0)).spec) == [("rewritten", None)]


def test_float_axes():
    p = rms_program()
    axes = next(op for op in p.block.operations if op.outputs[0].name == "axes")
    axes.attributes["val"].CopyFrom(literal(np.array([1.5])))
    axes.outputs[0].type.CopyFrom(ttype([1]))
    assert program_problem(p.spec).endswith("input 'axes' is fp32; reduce_mean takes int32 there")  # on parse
    assert chains(p.spec, validated=True) == [("left alone", "reduction axes are not integers")]  # engine: no crash


def test_keep_dims_that_is_not_one_flag():
    p = rms_program()
    keep = next(op for op in p.block.operations if op.outputs[0].name == "keep")
    keep.attributes["val"].CopyFrom(literal(np.array([True, True]), "BOOL"))
    keep.outputs[0].type.CopyFrom(ttype([2], "BOOL"))
    assert chains(p.spec) == [("left alone", "keep_dims is false")]


def test_zero_size_normalised_axis():
    assert chains(rms_program(n=0).spec) == [("left alone", "a normalised axis has size 0: nothing to normalise")]


def test_chain_output_that_is_not_a_float_tensor():
    p = rms_program()
    p.block.operations[-1].outputs[0].type.tensorType.dataType = MIL_pb2.DataType.Value("INT32")
    assert chains(p.spec) == [("left alone", "the chain's output 'out' is not a float tensor")]


def test_op_names_shared_by_two_ops():
    """The splice and the dead-op sweep go by op name: a chain touching a name two ops carry is left alone."""
    p = rms_program()
    rsqrt = next(op for op in p.block.operations if op.type == "rsqrt")
    rsqrt.attributes["name"].CopyFrom(literal(np.array("v"), "STRING"))  # the add's output is named v
    assert chains(p.spec) == [("left alone", "op name 'v' names several ops of this function; not rewritten")]


def test_provenance_count_that_is_not_ascii_digits():
    spec = rms_program().spec
    spec.description.metadata.userDefined[provenance_key(RMS_NORM)] = "\u00b2"  # "²".isdigit() is True
    assert chains(spec) == [("rewritten", None)]
    assert spec.description.metadata.userDefined[provenance_key(RMS_NORM)] == "1"


# -- 3. literal decoding --------------------------------------------------------------------------------------------------

def test_decode_compares_counts_as_python_ints():
    """2**32 * 2**32 wraps to 0 in int64: an empty payload must not pass for that shape."""
    value = literal(np.zeros(0))
    value.type.CopyFrom(ttype([2**32, 2**32]))
    assert decode_value(value) is None


def test_decode_refuses_a_partial_fp16_element():
    value = literal(np.ones(2), "FLOAT16")
    value.immediateValue.tensor.bytes.values = b"\x00\x3c\x00"
    assert decode_value(value) is None
    good = literal(np.array([1.0, 2.0]), "FLOAT16")
    assert decode_value(good).tolist() == [1.0, 2.0]


# -- 7. random inputs for verify ------------------------------------------------------------------------------------------

def test_random_inputs_refuse_a_huge_declared_input():
    p = Program({"x": ttype([100000, 100000]), "y": ttype([3])})
    tracemalloc.start()
    try:
        with pytest.raises(InputTooLarge) as e:
            random_inputs(p.spec, p.function, np.random.default_rng(0))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert isinstance(e.value, ValueError)
    assert str(e.value) == (
        "input 'x' of shape [100000, 100000] holds 10000000000 elements; random inputs are limited to 67108864 "
        "elements in total per function (10000000000 needed so far)"
    )
    assert peak < 1 << 20


def test_random_inputs_budget_is_for_all_inputs_together():
    half = MAX_ELEMENTS // 2
    p = Program({"a": ttype([half]), "b": ttype([half]), "c": ttype([1], "INT32")})
    with pytest.raises(InputTooLarge) as e:
        random_inputs(p.spec, p.function, np.random.default_rng(0))
    assert (e.value.name, e.value.count, e.value.total) == ("c", 1, MAX_ELEMENTS + 1)
    q = Program({"a": ttype([2, 3]), "m": ttype([4], "BOOL")})
    feeds = random_inputs(q.spec, q.function, np.random.default_rng(0))
    assert {k: v.shape for k, v in feeds.items()} == {"a": (2, 3), "m": (4,)}
