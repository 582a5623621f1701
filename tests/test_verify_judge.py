"""`verify`'s float64 judge passes correct rewrites and still fails wrong ones.

Each wrong rewrite is made by editing an optimized package's program (the spec), as a bug in a rule's lowering
would leave it: a wrong epsilon, the norm over the wrong axis, gamma dropped, `concat([x, x])` in place of
`concat([x, -x])`. Each must FAIL on a shallow model (one norm) and on a deep one (the 16-layer, 33-norm fp16
decoder of bench/bench_large.py at hidden size 64), where the reference's own fp16 rounding is largest.
"""

import os
import sys

import pytest

from conftest import FIXTURES, ROOT, fixture_path
from broken_rewrites import BROKEN, edited as _edited, wrong_axis
from mlopt import optimize_package
from mlopt.analyses.verify import verify_packages

sys.path.insert(0, os.path.join(ROOT, "bench"))
from bench_large import build  # noqa: E402

RMS_SHALLOW = fixture_path("hf_fp16_ios17")
LN_SHALLOW = os.path.join(FIXTURES, "layernorm", "dtln_instant_layernorm_fp16_ios17.mlpackage")


@pytest.fixture(scope="module")
def deep(tmp_path_factory):
    """(reference, its rewrite): 16 layers of attention and MLP, 33 RMSNorms, fp16."""
    folder = tmp_path_factory.mktemp("deep")
    reference, optimized = folder / "deep.mlpackage", folder / "deep.opt.mlpackage"
    build(str(reference), layers=16, hidden=64, mlp=128)
    optimize_package(reference, optimized)
    return reference, optimized


@pytest.fixture(scope="module")
def shallow(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shallow")
    out = {}
    for name, path in (("rms", RMS_SHALLOW), ("ln", LN_SHALLOW)):
        out[name] = (path, folder / f"{name}.opt.mlpackage")
        optimize_package(path, out[name][1])
    return out


# --- correct rewrites pass --------------------------------------------------------------------------------------
def test_the_deep_models_correct_rewrite_passes(deep):
    report = verify_packages(*deep)
    assert report.passed, report.render()
    (check,) = report.checks
    assert check.candidate_error <= 4.0 * check.reference_error
    assert check.note.startswith(f"against float64: reference {check.reference_error:.2g}, candidate {check.candidate_error:.2g}")


def test_past_a_tighter_tolerance_the_deep_models_rewrite_passes_by_float64(deep):
    """With --rtol/--atol 1e-3 the rewrite differs from the reference past tolerance (fp16 rounds in other places
    across 16 layers), and passes because it is no further from float64 than the reference; the wrong ones still
    fail under the same tolerance (test below)."""
    report = verify_packages(*deep, rtol=1e-3, atol=1e-3)
    (check,) = report.checks
    assert check.passed and check.passed_by == "float64" and check.max_abs > 1e-3
    assert check.note.endswith("beyond tolerance of the reference, but no further from float64 than 4x the reference's error")


@pytest.mark.parametrize("name", BROKEN)
def test_a_wrong_rewrite_of_the_deep_model_fails_past_a_tighter_tolerance(deep, tmp_path, name):
    broken = _edited(deep[1], tmp_path / "broken.mlpackage", BROKEN[name])
    (check,) = verify_packages(deep[0], broken, rtol=1e-3, atol=1e-3).checks
    assert not check.passed


@pytest.mark.parametrize("kind", ["rms", "ln"])
def test_a_shallow_models_correct_rewrite_passes_by_tolerance(shallow, kind):
    report = verify_packages(*shallow[kind])
    assert report.passed and [c.passed_by for c in report.checks] == ["tolerance"]


# --- wrong rewrites fail --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BROKEN)
def test_a_wrong_rewrite_of_the_deep_model_fails(deep, tmp_path, name):
    broken = _edited(deep[1], tmp_path / "broken.mlpackage", BROKEN[name])
    report = verify_packages(deep[0], broken)
    (check,) = report.checks
    assert not check.passed and check.passed_by is None, report.render()
    assert check.candidate_error > 10 * check.reference_error  # far past the factor of 4
    assert check.note.endswith("the candidate departs from the mathematics more than the reference")


@pytest.mark.parametrize("kind, name", [("rms", n) for n in BROKEN] + [("ln", n) for n in ("wrong eps", "dropped gamma")])
def test_a_wrong_rewrite_of_a_shallow_model_fails(shallow, tmp_path, kind, name):
    reference, optimized = shallow[kind]
    broken = _edited(optimized, tmp_path / "broken.mlpackage", BROKEN[name])
    report = verify_packages(reference, broken)
    (check,) = report.checks
    assert not check.passed and check.passed_by is None, report.render()
    assert check.candidate_error > 10 * check.reference_error


def test_a_layer_norm_over_the_wrong_axis_with_its_gamma_cannot_pass(shallow, tmp_path):
    """Over axis -2 the LayerNorm's gamma (64 values for the last axis) no longer fits: the program cannot run, and
    verify says so (exit 3), it does not pass."""
    from mlopt.errors import CannotVerify

    reference, optimized = shallow["ln"]
    broken = _edited(optimized, tmp_path / "broken.mlpackage", wrong_axis)
    with pytest.raises(CannotVerify, match="op 'add_1_cast_fp16' \\(layer_norm\\) failed: ValueError: cannot reshape"):
        verify_packages(reference, broken)


def test_a_float64_run_past_the_memory_budget_leaves_the_tolerance_judgement(tmp_path, monkeypatch):
    """The float64 run obeys the interpreter's budget like any run (its values take 4x fp16's bytes): past it,
    verify judges by tolerance alone and says so, with no error figures, rather than failing or exceeding memory."""
    from mlopt.numerics import interpreter

    reference = fixture_path("decoder_fp16_ios17")
    optimize_package(reference, tmp_path / "o.mlpackage")
    monkeypatch.setattr(interpreter, "MAX_LIVE_BYTES", 2000)  # the fp16 runs hold at most 1024 bytes at once
    report = verify_packages(reference, tmp_path / "o.mlpackage")
    (check,) = report.checks
    assert check.passed and check.passed_by == "tolerance"
    assert check.reference_error is None and check.candidate_error is None and check.note is None
    assert report.notes == [
        "function 'main': no float64 run (op 'mul_1' (mul): the values held at once take 2048 bytes, more than the "
        "interpreter's budget of 2000); judged by tolerance alone"
    ]
