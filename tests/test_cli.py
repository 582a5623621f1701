"""The `mlopt optimize` command: reports (human, JSON), dry run, compute units, the README's first command."""

import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, fixture_path, op_types, run, tree_digest


def test_human_report(capsys, tmp_path):
    out = tmp_path / "o.mlpackage"
    code, text, err = run(capsys, "optimize", fixture_path("decoder_fp16_ios17"), out)
    assert code == 0 and err == ""
    lines = text.splitlines()
    assert lines[0] == f"mlopt optimize {fixture_path('decoder_fp16_ios17')} (compute units CPU_AND_NE)"
    assert lines[1] == "  function main (CoreML7): 5 candidate chains: 5 rewritten, 0 left alone"
    # the change by op type, constants excluded: per chain pow, reduce_mean, add, rsqrt, mul, mul go and
    # mul, concat, layer_norm, slice_by_index, mul come (the decoder's residual adds stay)
    assert lines[7:15] == [
        "    op type         before  after",
        "    add                  9      4",
        "    concat               0      5",
        "    layer_norm           0      5",
        "    pow                  5      0",
        "    reduce_mean          5      0",
        "    rsqrt                5      0",
        "    slice_by_index       0      5",
    ]
    assert sum(line.startswith("    rewritten") for line in lines) == 5
    assert re.search(r"rewritten +reduce_mean_0 -> mul_1: pow -> reduce_mean -> add -> rsqrt -> mul -> mul\(gamma\) "
                     r"\(axes 2, eps 1\.01e-06, fp16; self-check vs float64: rewrite \d\.\de-0\d, original 1\.0e\+00\)", text)
    assert re.fullmatch(rf"  wrote {re.escape(str(out))} \(weights and other files copied byte for byte: (copy_file_range|clonefile|streamed copy)\)", lines[-1])


def test_human_report_names_near_miss_reasons(capsys, tmp_path):
    code, text, _ = run(capsys, "optimize", fixture_path("near_misses_fp16_ios17"), tmp_path / "o.mlpackage")
    assert code == 0
    assert "    left alone     reduce_mean_3: pow -> reduce_mean: power is 3, not 2" in text.splitlines()


def test_json_report(capsys, tmp_path):
    code, text, _ = run(capsys, "optimize", fixture_path("escape_variance_fp32_ios17"), tmp_path / "o.mlpackage", "--json")
    assert code == 0
    report = json.loads(text)
    assert report["rewrites"] == 1 and report["left_alone"] == 0 and report["written"] is True
    (function,) = report["functions"]
    assert function["name"] == "main" and function["opset"] == "CoreML7"
    (chain,) = function["chains"]
    assert chain["status"] == "rewritten"
    assert chain["output"] == "mul_1" and chain["axes"] == [2] and chain["dtype"] == "fp32"
    assert chain["epsilon"] == pytest.approx(1e-6 + 1e-12, rel=1e-6)
    assert 0 <= chain["error"] < 1e-5
    # only the two muls go: the mean square feeds another op and rsqrt's value is a model output
    changed = {t: counts for t, counts in function["ops"].items() if counts[0] != counts[1]}
    assert changed == {"concat": [0, 1], "layer_norm": [0, 1], "slice_by_index": [0, 1]}  # 2 muls go, 2 come
    assert report["schema"] == 1 and report["command"] == "optimize" and report["candidates"] == 1


def test_json_is_strict_json_even_with_infinite_errors(capsys):
    code, text, _ = run(capsys, "optimize", fixture_path("hf_fp16_ios17"), "--dry-run", "--json")
    assert code == 0
    chain = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))["functions"][0]["chains"][0]
    assert chain["status"] == "would rewrite"
    assert isinstance(chain["error"], float)


def test_json_writes_non_finite_numbers_as_null_with_a_flag():
    from mlopt.report import json_safe

    assert json_safe({"error": float("inf"), "x": [1.0, float("nan")], "ok": 2.0}) == {
        "error": None, "error_nonfinite": "inf", "x": [1.0, None], "ok": 2.0,
    }


def test_dry_run_writes_nothing(capsys, tmp_path):
    out = tmp_path / "o.mlpackage"
    code, text, _ = run(capsys, "optimize", fixture_path("hf_fp16_ios17"), out, "--dry-run")
    assert code == 0
    assert not out.exists()
    assert "1 would rewrite" in text and text.splitlines()[-1] == f"  dry run: {out} not written"


def test_dry_run_reports_what_a_real_run_would_do(capsys, tmp_path):
    code, dry, _ = run(capsys, "optimize", fixture_path("decoder_fp16_ios17"), "--dry-run", "--json")
    code, real, _ = run(capsys, "optimize", fixture_path("decoder_fp16_ios17"), tmp_path / "o.mlpackage", "--json")
    dry, real = json.loads(dry), json.loads(real)
    assert dry["dry_run"] is True and dry["rewrites"] == real["rewrites"] == 5
    assert dry["functions"][0]["ops"] == real["functions"][0]["ops"]
    assert [c["status"] for c in dry["functions"][0]["chains"]] == ["would rewrite"] * 5


@pytest.mark.parametrize("units", ["ALL", "CPU_ONLY", "CPU_AND_GPU"])
def test_other_compute_units_copy_unchanged(capsys, tmp_path, units):
    out = tmp_path / "o.mlpackage"
    code, text, _ = run(capsys, "optimize", fixture_path("hf_fp16_ios17"), out, "--compute-units", units)
    assert code == 0
    assert tree_digest(out) == tree_digest(fixture_path("hf_fp16_ios17"))
    assert f"note: compute units {units}: the LayerNorm trick only pays where the Neural Engine is targeted explicitly" in text
    assert "1 candidate chain: 1 matched, 0 left alone" in text and "    ops unchanged" in text


def test_compute_units_in_any_case(capsys):
    code, text, _ = run(capsys, "optimize", fixture_path("hf_fp16_ios17"), "--dry-run", "--compute-units", "all")
    assert code == 0 and "(compute units ALL, dry run)" in text


def test_cpu_and_ne_rewrites(capsys, tmp_path):
    out = tmp_path / "o.mlpackage"
    assert run(capsys, "optimize", fixture_path("hf_fp16_ios17"), out, "--compute-units", "CPU_AND_NE")[0] == 0
    assert "layer_norm" in op_types(str(out))


def test_unknown_compute_units_is_a_usage_error(capsys):
    code, text, err = run(capsys, "optimize", fixture_path("hf_fp16_ios17"), "--dry-run", "--compute-units", "NPU")
    assert code == 2 and text == ""
    assert err == (
        "mlopt: error: mlopt optimize: argument --compute-units: invalid choice: 'NPU' (choose from 'CPU_AND_NE', "
        "'ALL', 'CPU_ONLY', 'CPU_AND_GPU') (see mlopt optimize --help)\n"
    )


def test_no_command_names_mlopt_once(capsys):
    assert run(capsys) == (2, "", "mlopt: error: the following arguments are required: command (see mlopt --help)\n")
    code, text, err = run(capsys, "frobnicate")
    assert err == "mlopt: error: argument command: invalid choice: 'frobnicate' (choose from 'optimize', 'inspect', 'verify', 'audit', 'lint') (see mlopt --help)\n"


def test_usage_errors_with_json_print_a_json_error_object(capsys):
    code, text, err = run(capsys, "verify", "a", "b", "--rtol", "abc", "--json")
    assert code == 2 and err.count("\n") == 1
    assert json.loads(text) == {"schema": 1, "command": "verify", "error": {
        "kind": "bad input", "path": "mlopt verify", "problem": "argument --rtol: invalid float value: 'abc' (see mlopt verify --help)",
        "exit_code": 2,
    }}


@pytest.mark.parametrize("scale", ["nan", "inf", "-inf", "0", "-1", "1e300"])
def test_verify_scale_must_be_positive_and_finite(capsys, scale):
    """1e300 too: float32 random inputs would overflow to inf, and nothing would be compared."""
    pkg = fixture_path("hf_fp16_ios17")
    code, text, err = run(capsys, "verify", pkg, pkg, f"--scale={scale}")
    assert code == 2
    assert err == f"mlopt: error: --scale: {float(scale)!r}: the inputs' standard deviation must be a positive number up to 1e+30\n"


@pytest.mark.parametrize("command", ["verify", "audit"])
def test_a_negative_seed_is_bad_input_even_for_identical_models(capsys, command):
    pkg = fixture_path("hf_fp16_ios17")
    models = [pkg, pkg] if command == "verify" else [pkg]
    assert run(capsys, command, *models, "--seed", "-1") == (2, "", "mlopt: error: --seed: -1: expected an integer >= 0\n")


@pytest.mark.parametrize("command", ["verify", "audit"])
def test_inputs_must_name_inputs_and_hold_finite_numbers(capsys, tmp_path, command):
    """A misspelt key would leave its input random, silently; NaN inputs would make every output NaN."""
    pkg = fixture_path("hf_fp16_ios17")
    models = [pkg, pkg] if command == "verify" else [pkg]
    wrong_key, nan = tmp_path / "wrong_key.npz", tmp_path / "nan.npz"
    np.savez(wrong_key, y=np.zeros((1, 4, 16), np.float32))
    np.savez(nan, x=np.full((1, 4, 16), np.nan, np.float32))
    assert run(capsys, command, *models, "--inputs", wrong_key) == (
        2, "", f"mlopt: error: {wrong_key}: array 'y' names no input of the model (its inputs: x)\n")
    assert run(capsys, command, *models, "--inputs", nan) == (
        2, "", f"mlopt: error: {nan}: array 'x' holds NaN or +inf; inputs must be numbers (-inf is accepted, as an "
               "additive attention mask holds it)\n")
    np.savez(nan, x=np.full((1, 4, 16), np.inf, np.float32))
    assert run(capsys, command, *models, "--inputs", nan)[0] == 2


def _additive_mask_attention(path):
    """Attention whose mask is an input added to the scores, as a stateful decoder's `causal_mask` input is
    (coremltools' stateful-model guide; -inf above the diagonal)."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4, 8), dtype=types.fp16), mb.TensorSpec(shape=(1, 4, 4), dtype=types.fp16)],
                opset_version=ct.target.iOS17)
    def prog(x, causal_mask):
        scores = mb.add(x=mb.matmul(x=x, y=x, transpose_y=True), y=causal_mask)
        return mb.matmul(x=mb.softmax(x=scores, axis=-1), y=x, name="attended")

    ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17, compute_precision=ct.precision.FLOAT16,
               pass_pipeline=ct.PassPipeline.EMPTY, skip_model_load=True).save(str(path))
    return path


def test_an_additive_mask_input_with_minus_inf_is_accepted(capsys, tmp_path):
    """--inputs takes a causal mask holding -inf (it was refused as "NaN or inf"): the audit runs on it, and
    the masked positions get exactly zero weight (the first row attends to its own position only)."""
    from conftest import run_package

    pkg = _additive_mask_attention(tmp_path / "attn.mlpackage")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 4, 8)).astype(np.float16)
    mask = np.triu(np.full((1, 4, 4), -np.inf, np.float16), 1)
    npz = tmp_path / "in.npz"
    np.savez(npz, x=x, causal_mask=mask)
    capsys.readouterr()  # the conversion's progress bars
    code, out, err = run(capsys, "audit", pkg, "--inputs", npz)
    assert (code, err) == (0, "")
    assert f"  input: function 'main' input 'causal_mask': from {npz} (--seed and --scale do not apply)" in out.splitlines()
    attended = run_package(str(pkg), {"x": x, "causal_mask": mask})["attended"]
    np.testing.assert_array_equal(attended[0, 0], x[0, 0])


def test_dry_run_checks_out_like_a_real_run(capsys, tmp_path):
    pkg = fixture_path("hf_fp16_ios17")
    existing = tmp_path / "exists.mlpackage"
    existing.mkdir()
    for out, problem in ((existing, "already exists (use --force to replace it)"),
                         (f"{pkg}/x.mlpackage", f"is inside the input package {pkg}; write the output outside it")):
        code, text, err = run(capsys, "optimize", pkg, out, "--dry-run")
        assert code == 2 and err == f"mlopt: error: {out}: {problem}\n"
    assert list(existing.iterdir()) == []


def test_quiet_batch_still_names_bad_models(capsys, tmp_path):
    code, text, err = run(capsys, "optimize", tmp_path / "missing.mlpackage", fixture_path("hf_fp16_ios17"), "--out-dir", tmp_path / "out", "-q")
    assert code == 2 and text == ""
    assert err == f"mlopt: error: {tmp_path / 'missing.mlpackage'}: no such file or directory\n"


def readme_commands():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    return re.findall(r"^```(?:sh|bash)?\n(.*?)\n```", text, flags=re.S | re.M)


def test_readme_first_command_runs(tmp_path):
    """The README's first command, minus its install step, run as written (output redirected into tmp)."""
    first = readme_commands()[0]
    steps = [s.strip() for s in first.split("&&")]
    assert steps[0].startswith("pip install")
    (command,) = [s for s in steps if s.startswith("mlopt optimize")]
    argv = shlex.split(command)
    out = tmp_path / "out.mlpackage"
    argv[3] = str(out)  # mlopt optimize IN OUT ...
    result = subprocess.run([sys.executable, "-m", "mlopt", *argv[1:]], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "5 rewritten" in result.stdout
    assert op_types(str(out)).count("layer_norm") == 5


def test_inspect_lists_candidates_with_reasons(capsys):
    code, text, _ = run(capsys, "inspect", fixture_path("near_misses_fp16_ios17"))
    assert code == 0
    lines = text.splitlines()
    assert lines[:5] == [
        f"mlopt inspect {fixture_path('near_misses_fp16_ios17')}",
        "function main (CoreML7): 7 candidate chains: 7 left alone",
        "  [1] left alone: reduce_mean -> sub -> mul -> reduce_mean",
        "      ops: reduce_mean_0, sub_0, mul_8, reduce_mean_1",
        "      reason: mean over axes [1], variance over [2]: not one LayerNorm",
    ]
    assert "      reason: keep_dims is false" in lines


def test_inspect_shows_what_a_match_reads(capsys):
    code, text, _ = run(capsys, "inspect", fixture_path("gemma_casts_fp16_ios17"))
    assert code == 0
    lines = text.splitlines()
    assert lines[2] == "  [1] RMSNorm: pow -> reduce_mean -> add -> rsqrt -> mul -> mul(gamma)"
    assert lines[3] == "      ops: cast_3, pow_0, reduce_mean_0, add_0, rsqrt_0, mul_0, mul_1, cast_2"  # op names, not value names
    assert lines[4] == "      reads x, axes 2, eps 1e-06, gamma mul_1_y_0, fp16; defines cast_1"
    assert lines[5].startswith("      self-check vs float64 RMSNorm: rewrite ")


def test_inspect_json(capsys, tmp_path):
    code, text, _ = run(capsys, "inspect", fixture_path("decoder_fp16_ios17"), "--json")
    assert code == 0
    report = json.loads(text)
    chains = report["functions"][0]["chains"]
    assert len(chains) == 5
    assert all(c["status"] == "would rewrite" and c["x"] and c["gamma"] and c["ops"] for c in chains)
    assert report["command"] == "inspect"
    assert not {"output", "written", "copy_method", "housekeeping", "dry_run"} & set(report)
    assert not os.listdir(tmp_path)  # inspect writes nothing


def test_inspect_bad_input(capsys, tmp_path):
    code, out, err = run(capsys, "inspect", tmp_path / "missing.mlpackage")
    assert code == 2 and out == "" and err == f"mlopt: error: {tmp_path / 'missing.mlpackage'}: no such file or directory\n"


def test_optimize_never_imports_coremltools(tmp_path):
    """Start-up: `import coremltools` costs seconds and hundreds of MB where torch is installed. The command line's
    optimize path reads specs with coremltools' generated protobuf modules only."""
    probe = (
        "import sys; from mlopt.cli import main; rc = main(sys.argv[1:]); "
        "heavy = sorted(m for m in ('coremltools', 'torch') if m in sys.modules); "
        "print('HEAVY', heavy, file=sys.stderr); sys.exit(rc)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, "optimize", fixture_path("decoder_fp16_ios17"), str(tmp_path / "o.mlpackage")],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "HEAVY []"
