"""`mlopt verify A B`: identical models agree exactly, rewrites agree within tolerance, broken models fail."""

import json
import os
import shutil

import numpy as np
import pytest

from conftest import cli_peak_rss_mb, fixture_path, run as cli
from mlopt import optimize_package
from mlopt.analyses.verify import verify_packages
from mlopt.rules.rms_norm import RMSNormRule
from conftest import concat_without_negation


def run(capsys, *argv):
    return cli(capsys, "verify", *argv)


@pytest.fixture
def broken(tmp_path, monkeypatch):
    """hf_fp32_ios15 with a numerically wrong rewrite forced in (self-check off)."""
    with monkeypatch.context() as m:
        m.setattr(RMSNormRule, "lower", concat_without_negation)
        optimize_package(fixture_path("hf_fp32_ios15"), tmp_path / "broken.mlpackage", verify=False)
    return tmp_path / "broken.mlpackage"


def test_identical_models_agree_exactly(capsys):
    code, out, _ = run(capsys, fixture_path("decoder_fp16_ios17"), fixture_path("decoder_fp16_ios17"), "--json")
    assert code == 0
    result = json.loads(out)
    assert result["passed"] is True
    assert [(c["max_abs"], c["max_rel"]) for c in result["checks"]] == [(0.0, 0.0)]


def test_optimized_model_agrees(capsys, tmp_path):
    optimize_package(fixture_path("decoder_fp16_ios17"), tmp_path / "o.mlpackage")
    code, out, _ = run(capsys, fixture_path("decoder_fp16_ios17"), tmp_path / "o.mlpackage")
    assert code == 0
    lines = out.splitlines()
    assert lines[1].startswith("  pass  main/mul_9: max abs ")
    assert "(rtol 0.01, atol 0.01); against float64: reference " in lines[1] and ", candidate " in lines[1]
    assert lines[-1] == "  all outputs agree"


def test_broken_model_fails(capsys, broken):
    code, out, _ = run(capsys, fixture_path("hf_fp32_ios15"), broken)
    assert code == 1
    assert out.splitlines()[1].startswith("  FAIL  main/mul_1: max abs ")
    assert out.splitlines()[-1] == "  outputs differ"


def test_tolerance_override(capsys, broken):
    assert run(capsys, fixture_path("hf_fp32_ios15"), broken, "--atol", "100")[0] == 0


def test_inputs_from_npz(capsys, tmp_path):
    """Inputs of magnitude 300 from a file: x^2 overflows fp16 in the original, so the two models differ, and the
    rewrite passes because it agrees with float64 where the original carries no signal."""
    optimize_package(fixture_path("hf_fp16_ios17"), tmp_path / "o.mlpackage")
    x = (np.random.default_rng(1).standard_normal((1, 4, 16)) * 300).astype(np.float16)
    np.savez(tmp_path / "in.npz", x=x)
    code, out, _ = run(capsys, fixture_path("hf_fp16_ios17"), tmp_path / "o.mlpackage")
    assert code == 0 and "the reference departs" not in out
    code, out, _ = run(capsys, fixture_path("hf_fp16_ios17"), tmp_path / "o.mlpackage", "--inputs", tmp_path / "in.npz")
    assert code == 0 and "pass  main/mul_1: max abs " in out
    assert "the reference departs from the mathematics: not finite first at op 'pow_0'" in out


def test_inputs_follow_seed_and_flexible_shape_defaults():
    from conftest import inputs_for

    a, b, c = (inputs_for(fixture_path("flexible_seq_fp16_ios17"), seed=s)["x"] for s in (0, 0, 1))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.dtype == np.float16
    assert a.shape == (1, 8, 16)  # the unknown sequence length takes RangeDim's default, 8


def test_bad_input_exit_2(capsys, tmp_path):
    code, out, err = run(capsys, tmp_path / "missing.mlpackage", fixture_path("hf_fp16_ios17"))
    assert code == 2 and out == ""
    assert err == f"mlopt: error: {tmp_path / 'missing.mlpackage'}: no such file or directory\n"
    code, _, err = run(capsys, fixture_path("decoder_fp16_ios17"), fixture_path("hf_fp16_ios17"))
    assert code == 2
    assert err == (
        f"mlopt: error: {fixture_path('hf_fp16_ios17')}: function 'main' takes other inputs than in "
        f"{fixture_path('decoder_fp16_ios17')}\n"
    )


def test_identical_programs_and_weights_are_equal_without_running(tmp_path, monkeypatch, capsys):
    from mlopt.cli import main
    from mlopt.analyses import verify

    out = tmp_path / "same.mlpackage"
    optimize_package(fixture_path("decoder_fp16_ios17"), out, compute_units="CPU_ONLY")  # an unchanged copy

    def must_not_run(*args, **kwargs):
        raise AssertionError("ran the interpreter")

    monkeypatch.setattr(verify, "run_function", must_not_run)
    assert main(["verify", fixture_path("decoder_fp16_ios17"), str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].endswith(": identical program and weights: equal without running")


def test_same_program_other_weights_is_run(tmp_path):
    import shutil

    pkg = tmp_path / "other_weights.mlpackage"
    shutil.copytree(fixture_path("hf_fp16_ios17"), pkg)
    weights = pkg / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    data = bytearray(weights.read_bytes())
    data[-2:] = b"\x00\x7c"  # the gamma's last fp16 value becomes inf
    weights.write_bytes(bytes(data))
    report = verify_packages(fixture_path("hf_fp16_ios17"), pkg)
    assert not report.passed and report.checks[0].note != "identical program and weights: equal without running"


def test_a_reference_that_overflows_does_not_fail_its_rewrite(tmp_path):
    """At scale 300 the original fp16 chain's x^2 overflows and its output collapses to 0 (error 1 against
    float64: no signal): the rewrite, within tolerance of float64, passes; the report names the op that overflowed."""
    out = tmp_path / "o.mlpackage"
    optimize_package(fixture_path("hf_fp16_ios17"), out)
    report = verify_packages(fixture_path("hf_fp16_ios17"), out, scale=300)
    (check,) = report.checks
    assert check.passed and check.passed_by == "float64" and check.max_rel == float("inf")
    assert check.reference_error == 1.0 and 0 < check.candidate_error < 1e-3
    assert check.note.startswith("against float64: reference 1, candidate ")
    assert check.note.endswith(
        "; the reference departs from the mathematics: not finite first at op 'pow_0'; beyond tolerance of the "
        "reference, which carries no signal here; the candidate agrees with float64 within tolerance"
    )
    assert report.render().splitlines()[0].endswith("(reference, candidate; seed 0, scale 300, fp16 accumulated in fp32)")


def test_token_ids_are_drawn_from_the_embeddings_vocabulary(tmp_path):
    import coremltools as ct
    import numpy as np
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    from mlopt.numerics.inputs import random_inputs

    table = np.random.default_rng(0).standard_normal((1000, 8)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 6), dtype=types.int32)], opset_version=ct.target.iOS17)
    def prog(ids):
        return mb.gather(x=table, indices=ids, axis=0)

    path = tmp_path / "embed.mlpackage"
    ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17, skip_model_load=True).save(str(path))
    from mlopt.package import read_package

    package = read_package(path)
    function = package.spec.mlProgram.functions["main"]
    draws = np.concatenate([random_inputs(package.spec, function, np.random.default_rng(s))["ids"] for s in range(50)])
    package.close()
    assert draws.max() > 4 and draws.max() < 1000 and draws.min() >= 0
    copy = tmp_path / "copy.mlpackage"
    optimize_package(path, copy, compute_units="CPU_ONLY", force=True)
    (copy / "Data" / "com.apple.CoreML" / "weights" / "weight.bin").write_bytes((path / "Data" / "com.apple.CoreML" / "weights" / "weight.bin").read_bytes())
    report = verify_packages(path, copy, scale=300)  # same bytes, other inode: still no run needed
    assert report.passed and report.notes == []
    # a run: the candidate's weights differ by one byte, so the inputs are drawn, and the report says how
    weights = copy / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    data = bytearray(weights.read_bytes())
    data[200] ^= 1
    weights.write_bytes(bytes(data))
    report = verify_packages(path, copy, scale=300)
    import re

    (note,) = report.notes  # names depend on how many programs the MIL builder made in this process
    assert re.fullmatch(
        r"function 'main' input 'ids': integers, drawn from \[0, 1000\) \(the size of the axis of '\w+' that gather "
        r"'gather_\d+\w*' indexes; --scale does not apply\)", note,
    ), note


def test_fp16_accumulation_is_the_pessimistic_model(tmp_path):
    """The same rewrite passes at scale 50 when norms accumulate in fp32 (the hardware model) and overflows when
    they accumulate in fp16: the rewrite's layer_norm sums 2N = 32 squares, sqrt(65504 / 32) = 45.2 < 50."""
    out = tmp_path / "o.mlpackage"
    optimize_package(fixture_path("hf_fp16_ios17"), out)
    assert verify_packages(fixture_path("hf_fp16_ios17"), out, scale=50).passed
    report = verify_packages(fixture_path("hf_fp16_ios17"), out, scale=50, accumulate="fp16")
    assert not report.passed and report.accumulate == "fp16"
    assert report.notes == [
        "function 'main': chain at 'reduce_mean_0' (N = 16), fp16 accumulation: the original overflows once |x| > 255.9 "
        "or RMS > 64; the rewrite once RMS > 45.2 (with fp32 accumulation: the original past |x| > 255.9, the rewrite never)"
    ]


def test_accumulation_model_is_restored_even_when_verify_fails():
    from mlopt.errors import BadInputError
    from mlopt.numerics.ops.registry import ACCUMULATOR

    with pytest.raises(BadInputError, match="takes other inputs"):  # raised while accumulating in fp16
        verify_packages(fixture_path("hf_fp16_ios17"), fixture_path("textbook_eps_gamma_fp16_ios15"), accumulate="fp16")
    assert ACCUMULATOR == [np.float32]


def test_quiet_verify_still_prints_what_differs(capsys, broken):
    code, text, err = run(capsys, fixture_path("hf_fp32_ios15"), broken, "-q")
    assert code == 1 and text == ""
    assert err.startswith("mlopt: verify: main/mul_1 differs: max rel ") and err.count("\n") == 1
    assert err.endswith("; the candidate departs from the mathematics more than the reference\n")


def test_inputs_from_a_file_say_seed_and_scale_do_not_apply(tmp_path):
    npz = tmp_path / "in.npz"
    np.savez(npz, x=np.ones((1, 4, 16), np.float16))
    out = tmp_path / "o.mlpackage"
    optimize_package(fixture_path("hf_fp16_ios17"), out)
    report = verify_packages(fixture_path("hf_fp16_ios17"), out, inputs_path=str(npz), scale=300)
    assert report.passed
    assert report.notes == [f"function 'main' input 'x': from {npz} (--seed and --scale do not apply)"]


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM from /proc")
def test_verify_memory_follows_the_working_set_not_the_model(tmp_path):
    """Two packages of 8 x 32 MB fp16 weights each (512 MB in all): verify reads each weight when an op needs it
    and drops it after, so its peak RSS stays below even one package's weights. The float64 run of the reference
    holds one weight widened to float64 at a time (128 MB here, 4x its fp16 bytes, converted a chunk at a time),
    which this model of few large weights makes half a package."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    hidden, layers = 4096, 8
    rng = np.random.default_rng(0)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 8, hidden), dtype=types.fp16)], opset_version=ct.target.iOS17)
    def prog(x):
        for _ in range(layers):
            x = mb.linear(x=x, weight=(rng.standard_normal((hidden, hidden), dtype=np.float32) * 0.01).astype(np.float16))
        return x

    reference = tmp_path / "big.mlpackage"
    ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17, compute_precision=ct.precision.FLOAT16,
               pass_pipeline=ct.PassPipeline.EMPTY, skip_model_load=True).save(str(reference))
    candidate = tmp_path / "other.mlpackage"
    shutil.copytree(reference, candidate)
    weights = candidate / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    with open(weights, "r+b") as f:  # one byte differs: the candidate must be run, not taken as identical
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 1]))
    weight_mb = os.path.getsize(weights) / 2**20
    code, stderr, peak_mb = cli_peak_rss_mb("verify", reference, candidate)
    assert code == 0, stderr
    assert weight_mb > 250
    assert peak_mb < weight_mb, f"peak RSS {peak_mb:.0f} MB verifying two packages of {weight_mb:.0f} MB weights"


def _named_output(tmp_path, names, stem):
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 3))])
    def prog(x):
        outs = tuple(mb.mul(x=x, y=np.float32(k + 2), name=n) for k, n in enumerate(names))
        return outs if len(outs) > 1 else outs[0]

    path = tmp_path / f"{stem}.mlpackage"
    ct.convert(prog, convert_to="mlprogram", skip_model_load=True).save(str(path))
    return path


def test_outputs_named_differently_are_paired_by_position(tmp_path):
    """Two conversions of one model may name their outputs differently (coremltools' global op counter)."""
    result = verify_packages(_named_output(tmp_path, ["y"], "a"), _named_output(tmp_path, ["z"], "b"))
    assert result.passed
    assert "function 'main': no output name in common; outputs paired by position: y ~ z" in result.notes


def test_an_output_missing_from_the_candidate_is_a_failed_check(tmp_path, capsys):
    reference, candidate = _named_output(tmp_path, ["y", "w"], "c"), _named_output(tmp_path, ["y"], "a")
    capsys.readouterr()  # coremltools' progress bars
    code, out, err = run(capsys, reference, candidate)
    assert code == 1 and err == ""
    assert f"  FAIL  main/w: output missing in {tmp_path / 'a.mlpackage'}" in out.splitlines()


def _state_only_changed(tmp_path):
    """The stateful fixture rewired so that its output is unchanged but its state is not updated: the write stores
    the state it read, and the norm after it reads the sum directly instead of reading the state back. Every
    output equals the reference's; only the state the next prediction reads differs."""
    from coremltools.proto import Model_pb2

    candidate = tmp_path / "stale_state.mlpackage"
    shutil.copytree(fixture_path("stateful_fp16_ios18", "real"), candidate)
    spec_file = candidate / "Data" / "com.apple.CoreML" / "model.mlmodel"
    spec = Model_pb2.Model()
    spec.ParseFromString(spec_file.read_bytes())
    function = spec.mlProgram.functions["main"]
    ops = function.block_specializations[function.opset].operations
    for op in ops:
        for argument in op.inputs.values():
            for arg in argument.arguments:
                if op.type == "write_state" and arg.name == "var_28_cast_fp16":
                    arg.name = "read_state_0"
                elif arg.name == "coreml_update_state_1":
                    arg.name = "var_28_cast_fp16"
    spec_file.write_bytes(spec.SerializeToString())
    return candidate


def test_a_state_the_candidate_leaves_stale_fails(capsys, tmp_path):
    """A stateful model's state after the prediction is compared as its outputs are: a candidate whose outputs
    agree but whose state update is lost fails on that state (before, every output agreed and it passed)."""
    candidate = _state_only_changed(tmp_path)
    code, out, _ = run(capsys, fixture_path("stateful_fp16_ios18", "real"), candidate)
    lines = out.splitlines()
    assert code == 1
    assert lines[1] == "  pass  main/var_48: max abs 0, max rel 0 (rtol 0.01, atol 0.01); against float64: reference 0.00081, candidate 0.00081"
    assert lines[2].startswith("  FAIL  main/acc: max abs ")
    assert "; state: its value after the prediction, what the next prediction reads; against float64: reference " in lines[2]
    assert lines[-1] == "  outputs and states differ"


def test_a_state_is_compared_with_its_value_after_the_run(tmp_path):
    """The state's check holds its value after the prediction: the fed initial value plus the projection, equal
    in both runs of an optimized model within fp16 rounding, not the fed value itself."""
    from mlopt.analyses.verify import STATE_AFTER_RUN

    out = tmp_path / "o.mlpackage"
    optimize_package(fixture_path("stateful_fp16_ios18", "real"), out)
    report = verify_packages(fixture_path("stateful_fp16_ios18", "real"), out)
    assert [c.output for c in report.checks] == ["var_48", "acc"]
    state = report.checks[1]
    assert state.passed and state.note.startswith(STATE_AFTER_RUN + "; against float64: reference ")
    assert 0 < state.max_abs < 0.01  # the rewritten norm before the projection rounds differently: the state moved
    identical = verify_packages(fixture_path("stateful_fp16_ios18", "real"), fixture_path("stateful_fp16_ios18", "real"))
    assert [(c.output, c.passed_by) for c in identical.checks] == [("var_48", "identical"), ("acc", "identical")]
    assert report.render().splitlines()[-1] == "  all outputs and states agree"


def _wide_scale_norm_head(path):
    """An fp16 RMSNorm (transformers' LlamaRMSNorm as coremltools converts it) feeding a linear head whose weights
    of ~300 make logits in the 10^3-10^4, as a Gemma-style residual stream does: at --scale 300 the norm's x^2
    overflows fp16 and the reference collapses."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    rng = np.random.default_rng(0)
    gamma = (1 + 0.1 * rng.standard_normal(64)).astype(np.float16)
    weight = (300 * rng.standard_normal((256, 64))).astype(np.float16)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 8, 64), dtype=types.fp16)], opset_version=ct.target.iOS17)
    def prog(x):
        variance = mb.reduce_mean(x=mb.pow(x=x, y=np.float16(2)), axes=[-1], keep_dims=True)
        normed = mb.mul(x=gamma, y=mb.mul(x=x, y=mb.rsqrt(x=mb.add(x=variance, y=np.float16(1e-6)))))
        return mb.linear(x=normed, weight=weight, name="logits")

    ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17, compute_precision=ct.precision.FLOAT16,
               pass_pipeline=ct.PassPipeline.EMPTY, skip_model_load=True).save(str(path))
    return path


def test_a_large_scale_output_passes_by_its_error_relative_to_its_scale(tmp_path):
    """The reference carries no signal (its x^2 overflowed) and the output's scale is ~10^4: element by element,
    the candidate's logits near 0 carry the fp16 rounding of the large products they sum (past atol 0.01), yet its
    error against float64 relative to the largest logit is ~1e-4, within rtol. It passes, and says why (it failed
    before with "the candidate departs from float64 past the tolerance")."""

    reference = _wide_scale_norm_head(tmp_path / "head.mlpackage")
    out = tmp_path / "o.mlpackage"
    assert optimize_package(reference, out).rewrites == 1
    report = verify_packages(reference, out, scale=300)
    (check,) = report.checks
    assert check.passed and check.passed_by == "float64"
    assert check.reference_error == 1.0 and 0 < check.candidate_error < 1e-3
    assert check.note.endswith(
        "; beyond tolerance of the reference, which carries no signal here; the candidate's error against float64, "
        "relative to the output's largest magnitude, is within rtol (element by element, the rounding of large "
        "values puts the elements near 0 past atol)")


@pytest.mark.parametrize("name", ["dropped gamma", "concat([x, x])"])
def test_a_wrong_rewrite_of_a_reference_without_signal_still_fails(tmp_path, name):
    """Where the reference carries no signal, a wrong rewrite's error relative to the output's scale is far past
    rtol: it fails as before, whatever the output's scale. (An epsilon of 0.1 for 1e-6 is no error at this scale:
    beside a mean square of 9e4 it moves the result by 6e-7 relative, and it passes.)"""
    from broken_rewrites import BROKEN, edited

    reference = _wide_scale_norm_head(tmp_path / "head.mlpackage")
    out = tmp_path / "o.mlpackage"
    optimize_package(reference, out)
    wrong = edited(out, tmp_path / "wrong.mlpackage", BROKEN[name])
    (check,) = verify_packages(reference, wrong, scale=300).checks
    assert not check.passed and check.reference_error == 1.0 and check.candidate_error > 0.01
