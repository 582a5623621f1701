"""`mlopt audit`: the right finding at the right op on each hazardous fixture (fixtures/audit/, built from public
model code by make_audit_fixtures.py), no finding on healthy decoders, float64 peaks that agree with an
independent float64 PyTorch run, the JSON schema, exit codes and bad input."""

import json
import os

import numpy as np
import pytest

from conftest import FIXTURES, ROOT, fixture_path, main_view
from json_schema import errors
from mlopt.analyses.audit import audit_package
from mlopt.cli import main

AUDIT = os.path.join(FIXTURES, "audit")
with open(os.path.join(AUDIT, "expected.json")) as f:
    EXPECTED = json.load(f)
with open(os.path.join(ROOT, "mlopt", "report.schema.json")) as f:
    SCHEMA = json.load(f)
FP16_MAX = 65504


def audited(name, **kwargs):
    return audit_package(os.path.join(AUDIT, f"{name}.mlpackage"), inputs_path=os.path.join(AUDIT, f"{name}.inputs.npz"), **kwargs)


def row(report, op):
    return next(r for r in report.rows if r.op == op)


def findings(report, kind):
    return [f for f in report.sorted_findings() if f.kind == kind]


def const_values(name):
    """{const output name: its values} of a fixture, read by coremltools' own program loader (not mlopt's reader)."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load

    model = ct.models.MLModel(os.path.join(AUDIT, f"{name}.mlpackage"), skip_model_load=True)
    spec = model.get_spec()
    program = load(spec, spec.specificationVersion, model.weights_dir)
    return {op.outputs[0].name: np.asarray(op.outputs[0].val) for op in program.functions["main"].operations if op.op_type == "const"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_hazard_is_found_at_its_op_and_the_float64_peak_agrees(name):
    expected = EXPECTED[name]
    report = audited(name)
    assert not report.passed
    kinds = [(f.kind, f.op_type) for f in report.findings]
    assert (expected["finding"]["kind"], expected["finding"]["op_type"]) in kinds
    truth = expected["peak_abs_fp64"]  # every aten op of a float64 PyTorch run of the same inputs
    if name.startswith("mask_"):  # the fp32 model's sentinel (3.4e38, 1e9) is what the stored fp16 -inf replaced
        return
    assert truth / 2 <= report.peak_abs_fp64 <= truth * 2, (report.peak_abs_fp64, truth)


def test_gemma_residual_overflows_at_the_first_add_beyond_fp16():
    report = audited("gemma_residual_fp16_ios17")
    adds = [f for f in findings(report, "overflow") if f.op_type == "add"]
    assert len(adds) == 1
    view = main_view(os.path.join(AUDIT, "gemma_residual_fp16_ios17.mlpackage"))
    residual = [r for r in report.rows if r.op_type == "add"  # residual + branch: two computed operands
                and not any(view.is_const(v) for v in view.args(view.producer(r.op), "x") + view.args(view.producer(r.op), "y"))]
    assert len(residual) == 6  # 3 layers x (attention, MLP)
    first_over = next(r for r in residual if r.peak_abs_fp64 > FP16_MAX)
    assert adds[0].op == first_over.op and first_over is residual[3]  # the second layer's MLP add
    assert all(r.peak_abs_fp64 <= FP16_MAX for r in residual[:3])
    assert "beyond fp16's largest finite value 65504" in adds[0].detail
    # the RMSNorm x^2 after the residual passed 256 overflows first: program order puts it first
    first = report.sorted_findings()[0]
    assert (first.kind, first.op_type) == ("overflow", "pow")
    assert row(report, first.op).peak_abs_fp64 > FP16_MAX and row(report, first.op).inf > 0
    # the embedding scale sqrt(hidden) = 8 is in the program, as Gemma computes it
    assert any(view.const_value(v) is not None and np.asarray(view.const_value(v)).size == 1 and float(np.asarray(view.const_value(v)).reshape(-1)[0]) == 8.0
               for v in view.types if view.is_const(v) and view.is_float_tensor(v))


@pytest.mark.parametrize("name", ["mask_f32min_fp16_ios17", "mask_neginf_fp16_ios17"])
def test_masks_stored_as_fp16_minus_inf_are_static_findings_at_those_constants(name):
    report = audited(name)
    static = {f.op for f in findings(report, "static")}
    holding = {n for n, v in const_values(name).items() if v.dtype == np.float16 and np.isneginf(v).any()}
    # the fill of `inverted.masked_fill(...)` only decides `padding.to(torch.bool)`: -inf or finite, the same True
    assert "var_45_to_fp16" in holding and static == holding - {"var_45_to_fp16"}
    assert all("-inf" in f.detail for f in findings(report, "static"))


def test_a_minus_1e9_mask_kept_in_fp32_is_cast_to_fp16_inf_and_gives_nan():
    name = "mask_1e9_fp16_ios17"
    report = audited(name)
    holding = {n for n, v in const_values(name).items() if v.dtype == np.float32 and (v <= -1e9).any()}
    static = findings(report, "static")
    # the causal buffer is added to the scores; a fill whose -1e9 only decides a boolean (padding.to(bool)) is not
    assert "causal" in {f.op for f in static} and {f.op for f in static} < holding
    cast = static[0].detail.split("cast to fp16 at '")[1].split("'")[0]
    assert all(f"cast to fp16 at '{cast}'" in f.detail and "become" in f.detail for f in static)
    overflow = findings(report, "overflow")
    assert [(f.op, f.op_type) for f in overflow] == [(cast, "cast")]
    assert report.first_nonfinite == cast
    nan = findings(report, "nonfinite")
    assert [f.op_type for f in nan] == ["softmax"] and "NaN first appears here" in nan[0].detail
    assert row(report, nan[0].op).nan > 0


def test_matmul_overflow_is_named_at_the_matmul_not_after_it():
    report = audited("matmul_overflow_fp16_ios17")
    overflow = findings(report, "overflow")
    assert [f.op_type for f in overflow] == ["matmul"]
    matmul = row(report, overflow[0].op)
    assert matmul.peak_abs_fp64 > FP16_MAX and matmul.inf > 0
    assert all(r.peak_abs_fp64 <= FP16_MAX for r in report.rows[: report.rows.index(matmul)])
    assert report.first_nonfinite == matmul.op


def test_flushed_subnormals_that_change_the_output_are_an_underflow_finding():
    report = audited("subnormal_rmsnorm_fp16_ios17")
    underflow = findings(report, "underflow")
    assert [f.op_type for f in underflow] == ["pow"]
    assert row(report, underflow[0].op).flushed > 0.5
    assert "flushed to zero" in underflow[0].detail and "would differ" in underflow[0].detail
    # the inf comes from rsqrt(0): non-finite, not an overflow
    assert not findings(report, "overflow")
    assert [f.op_type for f in findings(report, "nonfinite")][0] == "rsqrt"
    kept = audited("subnormal_rmsnorm_fp16_ios17", subnormals="keep")
    assert kept.passed and all(r.flushed == 0 for r in kept.rows)


@pytest.mark.parametrize("name", ["real/decoder_llama_fp16_ios17", "real/decoder_qwen3_fp16_ios17", "real/decoder_llama_mixed_ios18",
                                  "decoder_fp16_ios17", "hf_fp16_ios17", "real/stateful_fp16_ios18", "real/multifunction_fp16_ios18",
                                  "converters/openelm_stable_l2_fp16_ios17"])  # clip(beta=+inf): an inf that computes nothing
@pytest.mark.parametrize("seed", [0, 1])
def test_healthy_models_have_no_finding(name, seed):
    report = audit_package(fixture_path(name), seed=seed)
    assert report.passed, [f.to_dict() for f in report.findings]
    assert report.first_nonfinite is None
    assert 0 < report.peak_abs_fp64 < FP16_MAX and report.min_headroom_bits > 0
    assert report.render().splitlines()[0].startswith(f"{fixture_path(name)}: fp16-safe")


def test_float64_run_matches_numpy_on_a_hand_checked_chain(tmp_path):
    """(x @ W)^2 for a known x and W: the float64 peak is numpy's, the device's fp16 overflows."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    w = np.random.default_rng(0).standard_normal((16, 16)).astype(np.float16) * np.float16(40)

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 16), dtype=types.fp16)], opset_version=ct.target.iOS17)
    def prog(x):
        y = mb.matmul(x=x, y=w, name="proj")
        return mb.mul(x=y, y=y, name="square")

    path = tmp_path / "square.mlpackage"
    ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17, compute_precision=ct.precision.FLOAT16,
               pass_pipeline=ct.PassPipeline.EMPTY, skip_model_load=True).save(str(path))
    x = np.random.default_rng(1).standard_normal((2, 16)).astype(np.float16)
    np.savez(tmp_path / "x.npz", x=x)
    report = audit_package(path, inputs_path=tmp_path / "x.npz")
    proj = x.astype(np.float64) @ w.astype(np.float64)
    assert row(report, "proj").peak_abs_fp64 == pytest.approx(np.abs(proj).max(), rel=1e-12)
    assert row(report, "square").peak_abs_fp64 == pytest.approx(np.abs(proj).max() ** 2, rel=1e-12)
    assert report.peak_abs_fp64 == pytest.approx(np.abs(proj).max() ** 2, rel=1e-12)
    assert [(f.kind, f.op) for f in report.findings] == [("overflow", "square")]
    assert report.notes == [f"function 'main' input 'x': from {tmp_path / 'x.npz'} (--seed and --scale do not apply)"]


def test_precision_loss_is_named_where_the_error_jumps(tmp_path):
    """(x + 1000) - 1000 in fp16: the add rounds x to steps of 0.5, the subtraction exposes it (catastrophic
    cancellation): the subtraction's error jumps while its inputs were accurate."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    @mb.program(input_specs=[mb.TensorSpec(shape=(4, 32), dtype=types.fp16)], opset_version=ct.target.iOS17)
    def prog(x):
        shifted = mb.add(x=x, y=np.float16(1000), name="shifted")
        return mb.sub(x=shifted, y=np.float16(1000), name="back")

    path = tmp_path / "cancel.mlpackage"
    ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17, compute_precision=ct.precision.FLOAT16,
               pass_pipeline=ct.PassPipeline.EMPTY, skip_model_load=True).save(str(path))
    report = audit_package(path)
    assert [(f.kind, f.op, f.op_type) for f in report.findings] == [("precision", "back", "sub")]
    assert row(report, "shifted").error < 1e-3 < 1e-2 < row(report, "back").error


def test_static_hazards_need_no_run_nan_in_an_fp16_constant(tmp_path):
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    bias = np.zeros((1, 8), np.float16)
    bias[0, 3] = np.nan

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 8), dtype=types.fp16)], opset_version=ct.target.iOS17)
    def prog(x):
        return mb.add(x=x, y=mb.const(val=bias, name="bad_bias"), name="out")

    path = tmp_path / "nan.mlpackage"
    ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17, compute_precision=ct.precision.FLOAT16,
               pass_pipeline=ct.PassPipeline.EMPTY, skip_model_load=True).save(str(path))
    report = audit_package(path)
    static = findings(report, "static")
    assert [(f.op, f.op_type) for f in static] == [("bad_bias", "const")] and "1 NaN" in static[0].detail
    assert not findings(report, "nonfinite")  # float64 reads the same NaN: nothing the device adds


# --- command line ------------------------------------------------------------------------------------------------
def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_exit_codes_and_report_shape(capsys):
    code, out, err = cli(capsys, "audit", fixture_path("real/decoder_llama_fp16_ios17"), "--top", "2")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].startswith(f"{fixture_path('real/decoder_llama_fp16_ios17')}: fp16-safe (no finding in ")
    assert lines[-4] == "  2 op outputs with the least headroom:" and lines[-3].split()[:3] == ["op", "output", "type"]
    name = os.path.join(AUDIT, "matmul_overflow_fp16_ios17.mlpackage")
    code, out, err = cli(capsys, "audit", name, "--inputs", os.path.join(AUDIT, "matmul_overflow_fp16_ios17.inputs.npz"))
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == f"{name}: 2 findings (overflow 1, nonfinite 1)"
    at = lines.index("  findings (program order):")
    assert lines[at + 1].split()[0] == "overflow" and "(matmul)" in lines[at + 1]
    code, out, err = cli(capsys, "audit", name, "-q", "--inputs", os.path.join(AUDIT, "matmul_overflow_fp16_ios17.inputs.npz"))
    assert code == 1 and out == "" and err.splitlines()[0].startswith("mlopt: audit: ") and ": overflow: float64 peak" in err


@pytest.mark.parametrize("argv, problem", [
    (["/nonexistent/x.mlpackage"], "/nonexistent/x.mlpackage: no such file or directory"),
    ([fixture_path("hf_fp16_ios17"), "--function", "nope"], f"{fixture_path('hf_fp16_ios17')}: has no function 'nope' (it has: main)"),
    ([fixture_path("hf_fp16_ios17"), "--inputs", "/nonexistent/in.npz"], "/nonexistent/in.npz: no such file"),
    ([fixture_path("hf_fp16_ios17"), "--scale", "0"], "--scale: 0.0: the inputs' standard deviation must be a positive number up to 1e+30"),
    ([fixture_path("hf_fp16_ios17"), "--top", "-1"], "--top: -1: expected a number of ops >= 0"),
    ([fixture_path("hf_fp16_ios17"), "--subnormals", "maybe"], None),
])
def test_bad_input_is_one_line_exit_2(capsys, argv, problem):
    code, out, err = cli(capsys, "audit", *argv)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    if problem:
        assert err == f"mlopt: error: {problem}\n"


def test_inputs_of_the_wrong_shape_are_bad_input(capsys, tmp_path):
    np.savez(tmp_path / "x.npz", x=np.zeros((3, 3), np.float32))
    code, _, err = cli(capsys, "audit", fixture_path("hf_fp16_ios17"), "--inputs", tmp_path / "x.npz")
    assert code == 2 and err.startswith(f"mlopt: error: {tmp_path / 'x.npz'}: array 'x' has shape [3, 3]; input 'x' of function 'main' is ")


@pytest.mark.parametrize("argv, code", [
    ([fixture_path("real/decoder_qwen3_fp16_ios17")], 0),
    ([os.path.join(AUDIT, "mask_1e9_fp16_ios17.mlpackage"), "--inputs", os.path.join(AUDIT, "mask_1e9_fp16_ios17.inputs.npz")], 1),
    ([os.path.join(AUDIT, "gemma_residual_fp16_ios17.mlpackage"), "--accumulate", "fp16"], 1),
    (["/nonexistent/x.mlpackage"], 2),
])
def test_json_fits_the_schema(capsys, argv, code):
    got, out, _ = cli(capsys, "audit", *argv, "--json")
    doc = json.loads(out, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert got == code and errors(doc, SCHEMA) == []
    if code == 2:
        assert doc["command"] == "audit" and doc["error"]["kind"] == "bad input"
        return
    assert len(doc["ops"]) > 0 and doc["passed"] == (code == 0)
    assert doc["peak_abs_fp64"] == max(r["peak_abs_fp64"] for r in doc["ops"])
    if code == 1:
        assert {f["kind"] for f in doc["findings"]} <= {"overflow", "nonfinite", "precision", "underflow", "static"}
        assert doc["first_nonfinite"] in {r["op"] for r in doc["ops"]}


def test_python_api_takes_a_path_or_a_saved_model():
    import mlopt

    report = mlopt.audit(fixture_path("hf_fp16_ios17"), scale=300)
    assert [(f.kind, f.op) for f in report.findings] == [("overflow", "pow_0")]


def test_memory_stays_bounded_a_run_past_the_budget_cannot_be_audited(capsys, monkeypatch):
    from mlopt.numerics import interpreter

    monkeypatch.setattr(interpreter, "MAX_LIVE_BYTES", 256)
    code, _, err = cli(capsys, "audit", fixture_path("hf_fp16_ios17"))
    assert code == 3 and err.startswith(f"mlopt: error: {fixture_path('hf_fp16_ios17')}: cannot be audited: function 'main': op ")
    assert "more than the interpreter's budget of 256" in err


def test_optimize_audit_reports_headroom_before_and_after(capsys, tmp_path):
    """The RMSNorm rewrite removes the x^2 overflows of the Gemma fixture; its residual stream still overflows."""
    out = tmp_path / "out.mlpackage"
    code, text, _ = cli(capsys, "optimize", os.path.join(AUDIT, "gemma_residual_fp16_ios17.mlpackage"), out, "--audit", "--json")
    doc = json.loads(text)
    assert code == 0 and errors(doc, SCHEMA) == []
    before, after = doc["audit"]["before"], doc["audit"]["after"]
    assert before["findings"] == [f.to_dict() for f in audit_package(os.path.join(AUDIT, "gemma_residual_fp16_ios17.mlpackage")).sorted_findings()]
    assert any(f["op_type"] == "pow" and f["kind"] == "overflow" for f in before["findings"])
    assert not any(f["op_type"] == "pow" for f in after["findings"])
    assert [f["op_type"] for f in after["findings"] if f["kind"] == "overflow"] == ["add"]
    assert before["min_headroom_bits"] < after["min_headroom_bits"] < 0
    code, text, _ = cli(capsys, "optimize", os.path.join(AUDIT, "gemma_residual_fp16_ios17.mlpackage"), out, "--force", "--audit")
    lines = text.splitlines()
    at = lines.index("  fp16 audit (mlopt audit, same inputs):")
    assert lines[at + 1].startswith("    before 5 findings: overflow at ") and lines[at + 2].startswith("    after  2 findings: overflow at ")


def test_optimize_audit_needs_a_written_output(capsys):
    code, _, err = cli(capsys, "optimize", fixture_path("hf_fp16_ios17"), "--dry-run", "--audit")
    assert code == 2 and err == f"mlopt: error: {fixture_path('hf_fp16_ios17')}: --audit audits the output written: it cannot be combined with --dry-run\n"


def test_a_program_computing_in_fp32_only_is_not_called_fp16_safe(capsys):
    code, out, _ = cli(capsys, "audit", fixture_path("real/decoder_llama_fp32_ios15"), "--top", "1")
    assert code == 0
    first = out.splitlines()[0]
    assert first.startswith(f"{fixture_path('real/decoder_llama_fp32_ios15')}: no finding; it computes in fp32 only (in fp16, its least headroom would be ")
    assert "fp16-safe" not in first


def test_optimize_audit_of_an_fp32_program_says_what_mlopt_audit_says(capsys, tmp_path):
    """`optimize --audit` used to print "fp16-safe; least headroom -112.0 bits" for an fp32 Llama."""
    name = fixture_path("real/decoder_llama_fp32_ios15")
    report = audit_package(name)
    bits, op = report.min_headroom_bits, report.least_headroom(1)[0].op
    code, out, _ = cli(capsys, "optimize", name, tmp_path / "o.mlpackage", "--audit")
    lines = out.splitlines()
    at = lines.index("  fp16 audit (mlopt audit, same inputs):")
    assert code == 0 and lines[at + 1] == (
        f"    before no finding; it computes in fp32 only (in fp16, its least headroom would be {bits:.1f} bits at '{op}')")
    assert lines[at + 2].startswith("    after  no finding; it computes in fp32 only (in fp16, its least headroom would be ")
    code, text, _ = cli(capsys, "optimize", name, tmp_path / "j.mlpackage", "--audit", "--json")
    doc = json.loads(text)
    assert code == 0 and errors(doc, SCHEMA) == [] and doc["audit"]["before"]["fp32_only"] is True
    code, text, _ = cli(capsys, "optimize", os.path.join(AUDIT, "gemma_residual_fp16_ios17.mlpackage"), tmp_path / "g.mlpackage", "--audit", "--json")
    assert json.loads(text)["audit"]["before"]["fp32_only"] is False


@pytest.mark.parametrize("name", ["gemma_residual_fp16_ios17", "subnormal_rmsnorm_fp16_ios17", "mask_1e9_fp16_ios17"])
def test_measuring_in_slices_gives_the_numbers_of_whole_tensors(monkeypatch, name):
    """Large tensors are measured slice by slice (bounded temporaries); the rows and findings must not change."""
    from mlopt.analyses import audit_walk

    whole = audited(name)
    monkeypatch.setattr(audit_walk, "CHUNK", 7)
    sliced = audited(name)
    assert [r.to_dict() for r in sliced.rows] == [r.to_dict() for r in whole.rows]
    assert [f.to_dict() for f in sliced.sorted_findings()] == [f.to_dict() for f in whole.sorted_findings()]


def test_python_api_refuses_a_model_with_no_saved_package():
    import mlopt

    class InMemory:  # an MLModel built from a spec in memory has no package_path
        package_path = None

    with pytest.raises(mlopt.BadInputError, match="has no saved package to audit"):
        mlopt.audit(InMemory())


def test_steps_walks_the_main_block_once_and_run_returns_what_it_computed():
    """Evaluator.steps, which audit steps in lockstep: every op but weight-file constants, in program order; the
    values run() returns are those the last step holds."""
    from conftest import inputs_for, run_package
    from mlopt.numerics.interpreter import Evaluator
    from mlopt.package.weights import BlobReader
    from mlopt.package import read_package

    path = fixture_path("decoder_fp16_ios17")
    package = read_package(path)
    view = main_view(path)
    feeds = inputs_for(path)
    blobs = BlobReader(os.path.dirname(package.model_path))
    try:
        stepped = [(op, env) for op, env in Evaluator(view, blobs).steps(feeds, view.main.outputs)]
        expected = [op for op in view.main.operations
                    if not (op.type == "const" and op.attributes["val"].WhichOneof("value") == "blobFileValue")]
        assert [id(op) for op, _ in stepped] == [id(op) for op in expected]
        last = stepped[-1][1]
        for name, value in run_package(path, feeds).items():
            np.testing.assert_array_equal(last[name], value)
    finally:
        blobs.close()
        package.close()


def test_optimize_audit_of_a_model_audit_cannot_run_writes_the_output_and_says_why(capsys, tmp_path, monkeypatch):
    """The output is written and proved: an audit past the interpreter's budget is a note, not a failure."""
    from mlopt.numerics import interpreter

    out = tmp_path / "out.mlpackage"
    monkeypatch.setattr(interpreter, "MAX_LIVE_BYTES", 256)
    code, text, err = cli(capsys, "optimize", fixture_path("hf_fp16_ios17"), out, "--audit", "--json")
    doc = json.loads(text)
    assert code == 0 and err == "" and errors(doc, SCHEMA) == [] and doc["written"]
    assert doc["audit"]["skipped"].startswith(f"{fixture_path('hf_fp16_ios17')}: cannot be audited: function 'main': op ")
    code, text, _ = cli(capsys, "optimize", fixture_path("hf_fp16_ios17"), out, "--audit", "--force")
    assert code == 0 and f"  fp16 audit: not run: {fixture_path('hf_fp16_ios17')}: cannot be audited: " in text


@pytest.mark.parametrize("array, problem", [
    (np.full((1, 8), 0.5, np.float32), "holds non-integer values (e.g. 0.5)"),
    (np.full((1, 8), 2**40, np.int64), "holds 1099511627776, beyond the range of int32 (-2147483648 to 2147483647)"),
    (np.full((1, 8), -1.0e10), "holds -1e+10, beyond the range of int32 (-2147483648 to 2147483647)"),
])
def test_inputs_an_integer_input_cannot_hold_unchanged_are_bad_input(capsys, tmp_path, array, problem):
    """A cast would truncate 0.5 token ids to 0 or wrap 2^40 around: the audit would run on other inputs than given."""
    np.savez(tmp_path / "x.npz", input_ids=array)
    code, out, err = cli(capsys, "audit", os.path.join(AUDIT, "gemma_residual_fp16_ios17.mlpackage"), "--inputs", tmp_path / "x.npz")
    assert (code, out) == (2, "")
    assert err == f"mlopt: error: {tmp_path / 'x.npz'}: array 'input_ids' {problem}; input 'input_ids' of function 'main' is int32\n"


def test_whole_floats_for_an_integer_input_are_taken_as_those_integers(capsys, tmp_path):
    given = np.load(os.path.join(AUDIT, "gemma_residual_fp16_ios17.inputs.npz"))["input_ids"]
    np.savez(tmp_path / "f.npz", input_ids=given.astype(np.float32))
    np.savez(tmp_path / "i.npz", input_ids=given)
    as_floats = cli(capsys, "audit", os.path.join(AUDIT, "gemma_residual_fp16_ios17.mlpackage"), "--inputs", tmp_path / "f.npz", "--json")
    as_ints = cli(capsys, "audit", os.path.join(AUDIT, "gemma_residual_fp16_ios17.mlpackage"), "--inputs", tmp_path / "i.npz", "--json")
    strip = lambda text: text.replace(str(tmp_path / "f.npz"), "X").replace(str(tmp_path / "i.npz"), "X")
    assert as_floats[0] == as_ints[0] == 1 and strip(as_floats[1]) == strip(as_ints[1])
