"""`mlopt verify A B`: identical models agree exactly, rewrites agree within tolerance, broken models fail."""

import json

import numpy as np
import pytest

from conftest import fixture_path
from mlopt import optimize_package
from mlopt.cli import main
from mlopt.rewrites import apply as apply_module
from test_selfcheck import concat_without_negation


def run(capsys, *argv):
    code = main(["verify", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def broken(tmp_path, monkeypatch):
    """hf_fp32_ios15 with a numerically wrong rewrite forced in (self-check off)."""
    with monkeypatch.context() as m:
        m.setattr(apply_module, "lower_rms_norm", concat_without_negation)
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
    assert lines[1].startswith("  pass  main/mul_9: max abs ") and lines[1].endswith("(rtol 0.01, atol 0.01)")
    assert lines[-1] == "  all outputs agree"


def test_broken_model_fails(capsys, broken):
    code, out, _ = run(capsys, fixture_path("hf_fp32_ios15"), broken)
    assert code == 1
    assert out.splitlines()[1].startswith("  FAIL  main/mul_1: max abs ")
    assert out.splitlines()[-1] == "  outputs differ"


def test_tolerance_override(capsys, broken):
    assert run(capsys, fixture_path("hf_fp32_ios15"), broken, "--atol", "100")[0] == 0


def test_inputs_from_npz(capsys, tmp_path):
    """Inputs of magnitude 300 from a file: x^2 overflows fp16 in the original, so the two models differ."""
    optimize_package(fixture_path("hf_fp16_ios17"), tmp_path / "o.mlpackage")
    x = (np.random.default_rng(1).standard_normal((1, 4, 16)) * 300).astype(np.float16)
    np.savez(tmp_path / "in.npz", x=x)
    assert run(capsys, fixture_path("hf_fp16_ios17"), tmp_path / "o.mlpackage")[0] == 0
    code, out, _ = run(capsys, fixture_path("hf_fp16_ios17"), tmp_path / "o.mlpackage", "--inputs", tmp_path / "in.npz")
    assert code == 1 and "FAIL  main/mul_1" in out


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
