"""The self-check rolls back a rewrite that is structurally valid but numerically wrong, and leaves alone a chain
the matcher misread."""

import dataclasses

import pytest

from conftest import concat_without_negation, file_digest, fixture_path, op_types, record_fed
from mlopt import optimize_package
from mlopt.patterns.status import Matched
from mlopt.rules.rms_norm import RMSNormRule

MODEL = "Data/com.apple.CoreML/model.mlmodel"
RIGHT_LOWER, RIGHT_MATCH = RMSNormRule.lower, RMSNormRule.match


def wrong_epsilon(rule, builder, fused):
    """A lowering bug: an eps that swamps mean(x^2) for small inputs (the match itself is right)."""
    return RIGHT_LOWER(rule, builder, dataclasses.replace(fused, params={**fused.params, "epsilon": 1.0}))


@pytest.mark.parametrize("bug", [concat_without_negation, wrong_epsilon])
@pytest.mark.parametrize("name", ["hf_fp16_ios17", "hf_fp32_ios15", "decoder_fp16_ios17"])
def test_wrong_rewrite_is_rolled_back(monkeypatch, tmp_path, bug, name):
    monkeypatch.setattr(RMSNormRule, "lower", bug)
    out = tmp_path / "o.mlpackage"
    report = optimize_package(fixture_path(name), out)
    assert report.rewrites == 0
    chains = [c for f in report.functions for c in f.chains]
    assert chains and all(c.status == "left alone" for c in chains)
    for c in chains:
        assert c.reason.startswith("self-check failed: the rewrite differs from RMSNorm by ")
        assert c.reason.endswith("; rolled back")
        assert c.error > 1e-2
    assert file_digest(out / MODEL) == file_digest(f"{fixture_path(name)}/{MODEL}")


def test_without_verify_the_wrong_rewrite_lands(monkeypatch, tmp_path):
    """The check is what stops it: with --no-verify the same bug goes through (and mlopt verify catches it)."""
    monkeypatch.setattr(RMSNormRule, "lower", concat_without_negation)
    out = tmp_path / "o.mlpackage"
    report = optimize_package(fixture_path("hf_fp32_ios15"), out, verify=False)
    assert report.rewrites == 1
    assert "layer_norm" in op_types(str(out))


def test_right_rewrites_pass_with_small_errors(tmp_path):
    report = optimize_package(fixture_path("decoder_fp16_ios17"), tmp_path / "o.mlpackage")
    chains = report.functions[0].chains
    assert [c.status for c in chains] == ["rewritten"] * 5
    assert all(c.error < 1e-3 for c in chains)  # fp16: about one ulp
    assert all(c.original_error == 1.0 for c in chains)  # the original fp16 chain collapses to 0 at |x| ~ 300


def test_misread_chain_is_left_alone(monkeypatch, tmp_path):
    """A matcher bug (epsilon read as 0.5): the original chain in float64 no longer equals what the match says it
    computes, so the chain is left alone even though the rewrite would agree with the misread formula."""

    def misread(rule, graph, op):
        status = RIGHT_MATCH(rule, graph, op)
        if isinstance(status, Matched):
            status.match.params["epsilon"] = status.match.facts["eps"] = 0.5
        return status

    monkeypatch.setattr(RMSNormRule, "match", misread)
    out = tmp_path / "o.mlpackage"
    report = optimize_package(fixture_path("hf_fp32_ios15"), out)
    (chain,) = report.functions[0].chains
    assert chain.status == "left alone"
    assert chain.reason.startswith("mlopt misread this chain: in float64 it differs from the matched RMSNorm by ")
    assert chain.reason.endswith("; not rewritten")
    assert file_digest(out / MODEL) == file_digest(f"{fixture_path('hf_fp32_ios15')}/{MODEL}")


@pytest.mark.parametrize(
    "name, shape", [("decoder_fp16_ios17", (1, 7, 16)), ("channels_first_fp16_ios17", (1, 16, 1, 7)), ("qk_heads_fp16_ios17", (1, 1, 7, 16))]
)
def test_check_runs_on_a_few_rows(monkeypatch, tmp_path, name, shape):
    """Rows are independent: every magnitude shares one input of 7 rows (a zero row, two per magnitude) whatever
    the model's sequence length, so the check's cost does not grow with the activation size."""
    fed = record_fed(monkeypatch)
    report = optimize_package(fixture_path(name), tmp_path / "o.mlpackage")
    assert report.rewrites >= 1 and report.left_alone == 0
    assert set(fed) == {shape}
    assert len(fed) == 3 * report.rewrites  # float64, original and rewrite: one evaluation each per chain
