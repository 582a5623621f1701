"""The rewrite end to end on every fixture: op sequences, names and types, coremltools can load the result,
weights untouched, idempotence, opset dtype rules, and numerical agreement in mlopt's interpreter."""

import os

import numpy as np
import pytest

from conftest import all_fixtures, file_digest, fixture_path, inputs_for, main_view, op_types, run_package
from mlopt import optimize_package
from mlopt.graph.dtypes import FLOAT16, FLOAT32
from mlopt.numerics.compare import compare

TRICK = ["mul", "concat", "layer_norm", "slice_by_index"]

# fixture -> (non-const op types after the rewrite, chains rewritten, chain form)
EXPECTED = {
    "hf_fp16_ios15": (["cast"] + TRICK + ["mul", "cast"], 1, "pow -> reduce_mean -> add -> rsqrt -> mul -> mul(gamma)"),
    "hf_fp16_ios17": (TRICK + ["mul"], 1, "pow -> reduce_mean -> add -> rsqrt -> mul -> mul(gamma)"),
    "hf_fp32_ios15": (TRICK + ["mul"], 1, "pow -> reduce_mean -> add -> rsqrt -> mul -> mul(gamma)"),
    "hf_fp32_ios17": (TRICK + ["mul"], 1, "pow -> reduce_mean -> add -> rsqrt -> mul -> mul(gamma)"),
    # the textbook fixtures scale their input first (a const in weight.bin): that leading mul is not the chain's
    "textbook_eps_gamma_fp16_ios15": (["cast", "mul"] + TRICK + ["mul", "cast"], 1, "mul -> reduce_mean -> add -> sqrt -> real_div -> mul(gamma)"),
    "textbook_eps_fp32_ios17": (["mul"] + TRICK, 1, "mul -> reduce_mean -> add -> sqrt -> real_div"),
    "textbook_gamma_fp32_ios15": (["mul"] + TRICK + ["mul"], 1, "mul -> reduce_mean -> sqrt -> real_div -> mul(gamma)"),
    "textbook_bare_fp16_ios17": (["mul"] + TRICK, 1, "mul -> reduce_mean -> sqrt -> real_div"),
    "square_swapped_fp16_ios17": (TRICK + ["mul"], 1, "square -> reduce_mean -> add -> rsqrt -> mul -> mul(gamma)"),
    "pow_half_fp32_ios16": (TRICK + ["mul"], 1, "mul -> reduce_mean -> add -> pow -> mul -> mul(gamma)"),
    "recip_sqrt_fp16_ios18": (TRICK + ["mul"], 1, "pow -> reduce_mean -> add -> sqrt -> real_div -> mul -> mul(gamma)"),
    # the fp32 island is gone: x is cast to fp16 once (the model input), the norm runs in fp16, output cast back
    "mixed_precision_ios17": (["cast"] + TRICK + ["mul", "cast"], 1, "pow -> reduce_mean -> add -> rsqrt -> mul -> mul(gamma)"),
    # cast(x16, fp32) and the cast back are gone; the fp32 gamma is cast to fp16 (weight.bin is never rewritten)
    "gemma_casts_fp16_ios17": (TRICK + ["cast", "mul"], 1, "pow -> reduce_mean -> add -> rsqrt -> mul -> mul(gamma)"),
    "channels_first_fp16_ios17": (TRICK + ["mul"], 1, "pow -> reduce_mean -> add -> rsqrt -> mul -> mul(gamma)"),
    "flexible_seq_fp16_ios17": (TRICK + ["mul"], 1, "pow -> reduce_mean -> add -> rsqrt -> mul -> mul(gamma)"),
    "decoder_fp16_ios17": (
        (TRICK + ["mul", "linear", "add"] + TRICK + ["mul", "linear", "silu", "add"]) * 2 + TRICK + ["mul"],
        5,
        "pow -> reduce_mean -> add -> rsqrt -> mul -> mul(gamma)",
    ),
    # Llama as written: fp32 statistics and x * rsqrt, cast to fp16, then weight *: all fp16 now, no casts
    "llama_cast_before_gamma_fp16_ios17": (TRICK + ["mul"], 1, "pow -> reduce_mean -> add -> rsqrt -> mul -> mul(gamma)"),
    # the mean square feeds another op and rsqrt is a model output: pow..rsqrt stay, the two muls go
    "escape_variance_fp32_ios17": (
        ["pow", "reduce_mean", "add", "rsqrt"] + TRICK + ["mul", "mul"], 1, "pow -> reduce_mean -> add -> rsqrt -> mul -> mul(gamma)"
    ),
    # the norm is inside the true branch (see test_rewrite_inside_cond_branch)
    "cond_branch_fp32_ios17": (["reduce_sum", "greater", "cond"], 1, "pow -> reduce_mean -> add -> rsqrt -> mul -> mul(gamma)"),
    # reduce_sum(x^2) * (1/N): a mean spelled with a sum
    "sum_scaled_fp16_ios17": (TRICK + ["mul"], 1, "square -> reduce_sum -> mul -> add -> rsqrt -> mul -> mul(gamma)"),
    # per-head norm on (B, heads, S, head_dim), axis 3
    "qk_heads_fp16_ios17": (["reshape", "transpose"] + TRICK + ["mul"], 1, "pow -> reduce_mean -> add -> rsqrt -> mul -> mul(gamma)"),
    "enumerated_shapes_fp16_ios17": (TRICK + ["mul"], 1, "pow -> reduce_mean -> add -> rsqrt -> mul -> mul(gamma)"),
    # the norm is inside the loop body (see test_rewrite_inside_while_body)
    "while_body_fp32_ios17": (["while_loop"], 1, "pow -> reduce_mean -> add -> rsqrt -> mul -> mul(gamma)"),
}


def test_every_fixture_has_an_expectation():
    assert sorted([*EXPECTED, "near_misses_fp16_ios17"]) == all_fixtures()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_op_sequence_after_rewrite(name, optimized):
    ops, rewrites, form = EXPECTED[name]
    out, report = optimized(name)
    assert op_types(out) == ops
    assert report.rewrites == rewrites and report.left_alone == 0
    assert {c.form for f in report.functions for c in f.chains} == {form}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_names_types_and_weights_preserved(name, optimized):
    out, _ = optimized(name)
    before, after = main_view(fixture_path(name)), main_view(out)
    # function signature and outputs: same names, same types (dtype, rank, dims incl. unknown)
    assert [(i.name, i.type) for i in before.function.inputs] == [(i.name, i.type) for i in after.function.inputs]
    assert list(before.main.outputs) == list(after.main.outputs)
    for value in before.main.outputs:
        assert after.types[value] == before.types[value]
    # every op that survived kept its name and outputs; new names are unique
    names = [o.name for op in after.main.operations for o in op.outputs]
    assert len(names) == len(set(names))
    weights = os.path.join("Data", "com.apple.CoreML", "weights", "weight.bin")
    assert file_digest(os.path.join(out, weights)) == file_digest(os.path.join(fixture_path(name), weights))
    assert file_digest(os.path.join(out, "Manifest.json")) == file_digest(os.path.join(fixture_path(name), "Manifest.json"))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_output_loads_in_coremltools(name, optimized):
    """MLModel loads the package; milproto.load re-runs coremltools' type inference on every op."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load

    out, _ = optimized(name)
    model = ct.models.MLModel(out, skip_model_load=True)
    spec = model.get_spec()
    program = load(spec, spec.specificationVersion, model.weights_dir)
    ops = [op.op_type for op in program.functions["main"].operations if op.op_type != "const"]
    assert ops == EXPECTED[name][0]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_numerically_equal_in_interpreter(name, optimized):
    out, _ = optimized(name)
    for seed in range(3):
        feeds = inputs_for(fixture_path(name), seed=seed)
        before, after = run_package(fixture_path(name), feeds), run_package(out, feeds)
        for value in before:
            diff = compare(after[value], before[value], rtol=1e-2 if "fp32" not in name else 1e-5, atol=1e-2 if "fp32" not in name else 1e-6)
            assert diff.passed, (value, diff)


def test_rewrite_fixes_fp16_overflow(optimized):
    """|x| ~ 300: x^2 overflows fp16 in the original chain (output collapses to 0); the rewrite stays right."""
    name = "hf_fp16_ios17"
    out, _ = optimized(name)
    feeds = inputs_for(fixture_path(name), scale=300.0)
    reference = run_package(fixture_path(name), feeds, float_dtype=np.float64)  # the chain's exact meaning
    before, after = run_package(fixture_path(name), feeds)["mul_1"], run_package(out, feeds)["mul_1"]
    assert np.all(before == 0)
    assert compare(after, reference["mul_1"], rtol=1e-2, atol=1e-2).passed


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_idempotent(name, optimized, tmp_path):
    out, _ = optimized(name)
    again = optimize_package(out, tmp_path / "again.mlpackage")
    assert again.rewrites == 0
    assert all(c.status == "left alone" for f in again.functions for c in f.chains)
    assert op_types(str(tmp_path / "again.mlpackage")) == op_types(out)


def _layer_norm_epsilon(path):
    view = main_view(path)
    (ln,) = [op for op in view.main.operations if op.type == "layer_norm"]
    eps = view.arg(ln, "epsilon")
    return view.dtype(eps), float(view.const_value(eps))


@pytest.mark.parametrize(
    "name, dtype, value",
    [
        # iOS15: epsilon in x's dtype (fp16): fp16(1e-6) + rsqrt's 2^-24, rounded to fp16
        ("hf_fp16_ios15", FLOAT16, float(np.float16(float(np.float16(1e-6)) + 2.0**-24))),
        # iOS17, eps exactly representable in fp16 (fp16(1e-6) + rsqrt epsilon 0): stays fp16
        ("hf_fp16_ios17", FLOAT16, float(np.float16(1e-6))),
        # iOS17, the fp32 island's 1e-6 is not exact in fp16: kept in fp32
        ("mixed_precision_ios17", FLOAT32, float(np.float32(1e-6 + 1e-12))),
        ("hf_fp32_ios15", FLOAT32, float(np.float32(1e-6 + 1e-12))),
        ("textbook_gamma_fp32_ios15", FLOAT32, 0.0),
    ],
)
def test_epsilon_dtype_follows_opset_rules(name, dtype, value, optimized):
    out, _ = optimized(name)
    got_dtype, got_value = _layer_norm_epsilon(out)
    assert got_dtype == dtype
    assert got_value == pytest.approx(value, rel=1e-6, abs=0)


def test_slice_needs_static_size_only_on_the_normalised_axis(optimized):
    out, _ = optimized("flexible_seq_fp16_ios17")
    view = main_view(out)
    (sl,) = [op for op in view.main.operations if op.type == "slice_by_index"]
    assert list(view.const_value(view.arg(sl, "end"))) == [0, 0, 16]
    assert list(view.const_value(view.arg(sl, "end_mask"))) == [True, True, False]
    dims = view.types[sl.outputs[0].name].tensorType.dimensions
    assert [d.WhichOneof("dimension") for d in dims] == ["constant", "unknown", "constant"]


def test_channels_first_normalises_axis_1(optimized):
    out, report = optimized("channels_first_fp16_ios17")
    view = main_view(out)
    (ln,) = [op for op in view.main.operations if op.type == "layer_norm"]
    assert list(view.const_value(view.arg(ln, "axes"))) == [1]
    assert report.functions[0].chains[0].axes == [1]


def test_near_misses_untouched_to_the_bit(optimized):
    out, report = optimized("near_misses_fp16_ios17")
    assert report.rewrites == 0
    reasons = [c.reason for c in report.functions[0].chains]
    assert reasons == [
        "mean over axes [1], variance over [2]: not one LayerNorm",
        "epsilon added outside the square root",
        "reduce_sum, not reduce_mean: no 1/N scale",
        "power is 3, not 2",
        "squares one tensor and scales another",
        "keep_dims is false",
        "reduce_sum scaled by 0.5, not 1/16",
    ]
    model = os.path.join("Data", "com.apple.CoreML", "model.mlmodel")
    assert file_digest(os.path.join(out, model)) == file_digest(os.path.join(fixture_path("near_misses_fp16_ios17"), model))


def test_provenance_metadata(optimized):
    out, _ = optimized("decoder_fp16_ios17")
    from mlopt import __version__
    from mlopt.package import read_package

    meta = read_package(out).spec.description.metadata.userDefined
    assert meta["com.github.mlopt.version"] == __version__
    assert meta["com.github.mlopt.rms_norm_rewrites"] == "5"
    assert meta["com.github.apple.coremltools.version"]  # the converter's own entries survive


def test_rewrite_inside_cond_branch(optimized):
    out, _ = optimized("cond_branch_fp32_ios17")
    (cond,) = [op for op in main_view(out).main.operations if op.type == "cond"]
    true_branch, false_branch = cond.blocks
    assert [op.type for op in true_branch.operations if op.type != "const"] == TRICK + ["mul"]
    assert list(true_branch.outputs) == ["mul_1"]
    assert [op.type for op in false_branch.operations if op.type != "const"] == ["mul"]
    for sign in (1.0, -1.0):  # both branches
        feeds = {"x": sign * np.abs(inputs_for(fixture_path("cond_branch_fp32_ios17"))["x"])}
        before = run_package(fixture_path("cond_branch_fp32_ios17"), feeds)
        after = run_package(out, feeds)
        (value,) = before
        assert compare(after[value], before[value], rtol=1e-5, atol=1e-6).passed


def test_rewrite_inside_while_body(optimized):
    out, _ = optimized("while_body_fp32_ios17")
    (loop,) = [op for op in main_view(out).main.operations if op.type == "while_loop"]
    cond_block, body = loop.blocks
    assert [op.type for op in body.operations if op.type != "const"] == ["add"] + TRICK + ["mul", "add"]
    # the interpreter runs the loop: three residual RMSNorm steps, checked against numpy in float64
    feeds = inputs_for(fixture_path("while_body_fp32_ios17"))
    h = feeds["x"].astype(np.float64)
    w = np.random.default_rng(21).uniform(0.5, 1.5, 16).astype(np.float32).astype(np.float64)
    for _ in range(3):
        h = h / np.sqrt(np.mean(h * h, axis=-1, keepdims=True) + 1e-6) * w + h
    for path in (fixture_path("while_body_fp32_ios17"), out):
        (value,) = run_package(path, feeds).values()
        np.testing.assert_allclose(value, h, rtol=1e-5, atol=1e-5)


def test_gamma_as_a_constant_expression(tmp_path):
    """A weight computed from constants inside the program (here 1 + w, left unfolded) is constant per call: it is
    multiplied in after the trick like a const."""
    import shutil

    from mlopt.package import read_package
    from mlopt.package.writer import write_package
    from mlopt.graph.emit import OpEmitter

    src = tmp_path / "in.mlpackage"
    shutil.copytree(fixture_path("hf_fp32_ios17"), src)
    package = read_package(src)
    function = package.spec.mlProgram.functions["main"]
    block = function.block_specializations[function.opset]
    ops = list(block.operations)
    (index,) = [i for i, op in enumerate(ops) if op.outputs[0].name == "mul_1"]
    gamma = ops[index].inputs["y"].arguments[0].name
    emit = OpEmitter([o.name for op in ops for o in op.outputs])
    one, one_name = emit.const("one", np.float32(1.0), FLOAT32)
    plus, plus_name = emit.op("add", {"x": gamma, "y": one_name}, main_view(str(src)).types[gamma], base="one_plus_w")
    ops[index].inputs["y"].arguments[0].name = plus_name
    del block.operations[:]
    block.operations.extend(ops[:index] + [one, plus] + ops[index:])
    write_package(package, package.spec, tmp_path / "edited.mlpackage")

    out = tmp_path / "out.mlpackage"
    report = optimize_package(tmp_path / "edited.mlpackage", out)
    (chain,) = report.functions[0].chains
    assert chain.form.endswith("mul(gamma)") and chain.status == "rewritten"
    assert op_types(str(out)) == ["add"] + TRICK + ["mul"]  # 1 + w stays, feeding the new gamma multiply
    feeds = inputs_for(str(tmp_path / "edited.mlpackage"))
    before, after = run_package(str(tmp_path / "edited.mlpackage"), feeds), run_package(str(out), feeds)
    assert compare(after["mul_1"], before["mul_1"], rtol=1e-5, atol=1e-6).passed
