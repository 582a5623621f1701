"""Tensor lists whose element shape holds names (symbolic sizes), as coremltools writes them for TensorFlow LSTMs,
and the DTLN packages (fixtures/dtln/, written by fixtures/make_dtln_fixtures.py from breizhn/DTLN's model code)
that hold them: the interpreter runs them and `verify` passes their rewrite."""

import json
import os

import numpy as np
import pytest

from conftest import FIXTURES, op_types
from mlopt import optimize_package
from mlopt.graph import SpecGraph
from mlopt.numerics.interpreter import Evaluator, InterpreterError
from mlopt.package.proto import MIL_pb2
from mlopt.rewrites.spec_builder import OpEmitter
from mlopt.analyses.verify import verify_packages
from test_interpreter_ops import literal_dtype

DTLN = os.path.join(FIXTURES, "dtln")
DTLN_MODELS = ["dtln_model_1_fp16_ios15", "dtln_model_2_fp16_ios15"]


def _program(*ops):
    """A function of `ops`: (type, output, {param: value}); a value is a name as ("name",), a tuple of consts as
    [v, ...] (one binding each, as coremltools writes a tuple input), anything else one const."""
    function = MIL_pb2.Function(opset="CoreML7")
    block = function.block_specializations["CoreML7"]
    for op_type, out_name, inputs in ops:
        bindings = {}
        for param, value in inputs.items():
            if isinstance(value, tuple):
                bindings[param] = [value[0]]
                continue
            names = []
            for k, v in enumerate(value if isinstance(value, list) else [value]):
                const, name = OpEmitter([]).const(f"{out_name}_{param}_{k}", np.asarray(v), literal_dtype(v))
                block.operations.append(const)
                names.append(name)
            bindings[param] = names
        o = block.operations.add(type=op_type)
        for param, names in bindings.items():
            for name in names:
                o.inputs[param].arguments.add().name = name
        o.outputs.add(name=out_name)
    return SpecGraph("f", function)


def _symbolic_list(*more):
    """make_list(elem_shape=("is0", 3)) of length 2, as the TF frontend's backfill pass writes it."""
    return _program(("make_list", "l0", dict(init_length=np.int32(2), elem_shape=["is0", np.int32(3)], dtype="fp32")), *more)


def test_a_symbolic_size_is_fixed_by_the_first_write():
    view = _symbolic_list(
        ("list_write", "l1", dict(ls=("l0",), index=np.int32(0), value=np.ones((4, 3), np.float32))),
        ("list_read", "r", dict(ls=("l1",), index=np.int32(1))),
        ("list_gather", "g", dict(ls=("l1",), indices=np.array([0, 1], np.int32))),
        ("list_length", "n", dict(ls=("l1",))),
    )
    result = Evaluator(view, blobs=None).evaluate(["r", "g", "n"], {})
    np.testing.assert_array_equal(result["r"], np.zeros((4, 3), np.float32))  # never written: zeros of the written shape
    np.testing.assert_array_equal(result["g"], np.stack([np.ones((4, 3)), np.zeros((4, 3))]))
    assert int(result["n"]) == 2


def test_all_entries_of_a_tuple_elem_shape_are_read():
    """Each entry of the tuple is one binding: the shape is (2, 3), not the first entry alone."""
    view = _program(
        ("make_list", "l0", dict(init_length=np.int32(1), elem_shape=[np.int32(2), np.int32(3)], dtype="fp16")),
        ("list_read", "r", dict(ls=("l0",), index=np.int32(0))),
    )
    r = Evaluator(view, blobs=None).evaluate(["r"], {})["r"]
    assert r.shape == (2, 3) and r.dtype == np.float16


def test_reading_an_unwritten_element_of_unknown_shape_says_why():
    view = _symbolic_list(("list_read", "r", dict(ls=("l0",), index=np.int32(0))))
    with pytest.raises(InterpreterError) as e:
        Evaluator(view, blobs=None).evaluate(["r"], {})
    assert str(e.value) == (
        "op 'r' (list_read) failed: ValueError: element 0 was never written and the element shape [?, 3] holds "
        "sizes known only at run time, fixed by a write"
    )


def test_a_write_of_another_shape_is_refused():
    view = _symbolic_list(
        ("list_write", "l1", dict(ls=("l0",), index=np.int32(0), value=np.ones((4, 3), np.float32))),
        ("list_write", "l2", dict(ls=("l1",), index=np.int32(1), value=np.ones((5, 3), np.float32))),
    )
    with pytest.raises(InterpreterError) as e:
        Evaluator(view, blobs=None).evaluate(["l2"], {})
    assert str(e.value) == "op 'l2' (list_write) failed: ValueError: writes an element of shape [5, 3] into a list of [4, 3]"
    view = _symbolic_list(("list_write", "l1", dict(ls=("l0",), index=np.int32(0), value=np.ones((4, 2), np.float32))))
    with pytest.raises(InterpreterError, match=r"writes an element of shape \[4, 2\] into a list of \[\?, 3\]"):
        Evaluator(view, blobs=None).evaluate(["l1"], {})


def test_a_list_past_the_budget_stops_the_run(monkeypatch):
    from mlopt.numerics.ops import lists

    monkeypatch.setattr(lists, "MAX_LIST_BYTES", 100)
    view = _symbolic_list(("list_scatter", "l1", dict(ls=("l0",), indices=np.arange(3, dtype=np.int32), value=np.ones((3, 4, 3), np.float32))))
    with pytest.raises(InterpreterError, match="the list would hold 144 bytes, more than the budget of 100"):
        Evaluator(view, blobs=None).evaluate(["l1"], {})


def test_reshape_like_reads_every_entry_of_its_tuples(tmp_path):
    """reshape_like's begins/ends/end_masks are tuples (one binding per entry), like elem_shape."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 12)), mb.TensorSpec(shape=(1, 2, 3)), mb.TensorSpec(shape=(4, 5))],
                opset_version=ct.target.iOS16)
    def prog(x, a, b):
        return mb.reshape_like(x=x, ref_tensors=(a, b), begins=(1, 0), ends=(3, 1), end_masks=(False, False))

    model = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16,
                       compute_precision=ct.precision.FLOAT32, pass_pipeline=ct.PassPipeline.EMPTY)
    model.save(str(tmp_path / "r.mlpackage"))
    from conftest import run_package

    x = np.arange(24, dtype=np.float32).reshape(2, 12)
    (out,) = run_package(tmp_path / "r.mlpackage", dict(x=x, a=np.zeros((1, 2, 3), np.float32), b=np.zeros((4, 5), np.float32))).values()
    np.testing.assert_array_equal(out, x.reshape(2, 3, 4))


@pytest.mark.parametrize("name", DTLN_MODELS)
def test_dtln_holds_lstm_loops_over_symbolic_lists(name):
    """The fixtures hold what the published packages hold: make_list with a name in elem_shape, list ops in
    while_loop bodies, and one InstantLayerNormalization (expected.json, from the model code)."""
    view = SpecGraph("main", _spec(name).mlProgram.functions["main"])
    make_lists = [op for op in view.main.operations if op.type == "make_list"]
    symbolic = [op for op in make_lists if any(
        view.producer(a.name).attributes["val"].immediateValue.tensor.WhichOneof("value") == "strings"
        for a in op.inputs["elem_shape"].arguments)]
    assert "tf_make_list_0" in [op.outputs[0].name for op in symbolic]
    assert op_types(_path(name)).count("while_loop") == 2
    with open(os.path.join(DTLN, "expected.json")) as f:
        assert json.load(f)[name]["layer_norms"] == 1


def _path(name):
    return os.path.join(DTLN, f"{name}.mlpackage")


def _spec(name):
    from mlopt.package import read_package

    package = read_package(_path(name))
    try:
        return package.spec
    finally:
        package.close()


def dtln_inputs(tmp_path, name):
    """Model 1 takes a magnitude spectrum (log(mag + 1e-7) is NaN for the negative values random inputs hold):
    magnitudes of normal draws, and the LSTM states as drawn."""
    rng = np.random.default_rng(3)
    first = "input_1" if name.endswith("1_fp16_ios15") else "input_3"
    size = 17 if first == "input_1" else 32
    state = "input_2" if first == "input_1" else "input_4"
    arrays = {first: np.abs(rng.standard_normal((1, 1, size))).astype(np.float32),
              state: (0.5 * rng.standard_normal((1, 2, 16, 2))).astype(np.float32)}
    path = tmp_path / f"{name}.npz"
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("name", DTLN_MODELS)
def test_dtln_rewrite_verifies(tmp_path, name):
    out = tmp_path / "o.mlpackage"
    optimize_package(_path(name), out)
    assert "layer_norm" in op_types(out) and "layer_norm" not in op_types(_path(name))
    report = verify_packages(_path(name), out, inputs_path=dtln_inputs(tmp_path, name))
    assert report.passed, report.render()
    assert [c.output for c in report.checks] == ["Identity", "Identity_1"]
    assert all(c.max_abs < c.atol / 10 for c in report.checks)  # far inside tolerance
    assert max(c.max_abs for c in report.checks) > 0  # the rewritten program did run: fp16 rounds differently
    from mlopt.cli import main

    assert main(["verify", _path(name), str(out), "--inputs", str(dtln_inputs(tmp_path, name)), "-q"]) == 0
    assert main(["verify", _path(name), str(out), "-q"]) == 0  # random inputs (model 1: NaN in both, noted)


def test_outputs_with_nothing_finite_say_nothing_was_compared(tmp_path):
    """DTLN's model 1 takes log(mag + 1e-7): on random normal inputs every output is NaN in both models (and in
    float64). That passes, as equal, but the note says no value was compared and how to give real inputs."""
    name = DTLN_MODELS[0]
    out = tmp_path / "o.mlpackage"
    optimize_package(_path(name), out)
    report = verify_packages(_path(name), out)
    assert report.passed
    for check in report.checks:
        assert check.note.startswith("no element is finite in either model: nothing was compared (inputs outside the "
                                     "model's domain, such as the log of a negative value? give real ones with --inputs)")
    report = verify_packages(_path(name), out, inputs_path=dtln_inputs(tmp_path, name))
    assert not any(c.note.startswith("no element is finite") for c in report.checks)


def test_a_weight_whose_declared_size_is_a_name_is_refused():
    """A const stored in weight.bin must declare every size: a name (unknown dimension) is an error naming it,
    never a size of 0 read from the unset field."""
    from conftest import fixture_path
    from mlopt.package import read_package

    package = read_package(fixture_path("hf_fp16_ios17"))
    try:
        function = package.spec.mlProgram.functions["main"]
        view = SpecGraph("main", function)
        (weight,) = [op for op in view.main.operations if op.type == "const" and op.attributes["val"].WhichOneof("value") == "blobFileValue"]
        weight.attributes["val"].type.tensorType.dimensions[0].unknown.SetInParent()
        with pytest.raises(InterpreterError) as e:
            Evaluator(view, package.blob_reader()).evaluate([weight.outputs[0].name], {})
    finally:
        package.close()
    assert str(e.value) == (
        f"const '{weight.outputs[0].name}' is stored in a weight file with a size unknown until run time"
    )
