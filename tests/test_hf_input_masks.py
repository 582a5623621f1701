"""Encoders written as transformers writes them, with the padding mask a model input (fixtures/hf_input_masks,
make_hf_input_mask_fixtures.py): converted at FLOAT16, `(1 - m) * finfo.min` is `0 * -inf` = NaN in the stored
program itself, so its float64 run has no number there either. The audit says where and which outputs it reaches,
and the headroom pass does not take an all-NaN value's peak (0) for a measurement."""

import json
import os

import numpy as np
import pytest

from conftest import ROOT, fixture_path, inputs_for, run as cli, run_package
from json_schema import errors
from mlopt import optimize_package
from mlopt.analyses.audit import audit_package
from mlopt.report import LEFT_ALONE, REWRITTEN

BERT = fixture_path("bert_input_mask_fp16_ios17", "hf_input_masks")
T5 = fixture_path("t5_input_mask_fp16_ios17", "hf_input_masks")
HEALTHY = fixture_path("real/decoder_llama_fp16_ios17")


def test_audit_says_float64_itself_is_nan_and_which_output_it_reaches(capsys):
    code, out, _ = cli(capsys, "audit", BERT, "--top", "0")
    lines = out.splitlines()
    assert code == 1 and lines[0] == f"{BERT}: 1 finding (static 1)"
    assert lines[-1] == (
        "  float64 itself is NaN at 14 op outputs, first at 'var_105_cast_fp16' (mul): the program as stored computes "
        "no number there, so nothing is judged against float64 at those elements and their peaks are unmeasured; "
        "NaN reaches output 'var_175' (256 elements)")


def test_audit_json_counts_float64_nan_per_op_output(capsys):
    code, out, _ = cli(capsys, "audit", BERT, "--json")
    with open(os.path.join(ROOT, "mlopt", "report.schema.json")) as f:
        assert errors(json.loads(out), json.load(f)) == []
    rows = {r["op"]: r for r in json.loads(out)["ops"]}
    # (1 - m) * -inf: NaN where m keeps (1 - m = 0); the output (1, 8, 32) is NaN everywhere, the device's too
    assert rows["var_175"]["nan_fp64"] == 256 and rows["var_175"]["nan"] == 256 and rows["var_175"]["peak_abs_fp64"] == 0
    first = [r["op"] for r in json.loads(out)["ops"] if r["nan_fp64"]][0]
    assert first == "var_105_cast_fp16" and rows[first]["op_type"] == "mul"


def test_healthy_model_has_no_float64_nan_line_and_zero_counts(capsys):
    report = audit_package(HEALTHY, top=0)
    assert report.rows and all(r.nan_fp64 == 0 for r in report.rows)
    assert report.float64_nan_lines() == []


def test_after_finite_mask_the_float64_run_has_numbers_again(tmp_path):
    out = tmp_path / "bert.mlpackage"
    optimize_package(BERT, out)
    report = audit_package(out, top=0)
    assert report.passed and all(r.nan_fp64 == 0 for r in report.rows) and report.float64_nan_lines() == []


def test_headroom_leaves_a_stream_float64_cannot_measure_alone_with_the_reason(tmp_path):
    """Without finite_mask (no first-pass rules) the mask is still `0 * -inf` when the headroom pass measures."""
    report = optimize_package(BERT, tmp_path / "out.mlpackage", rules=(), headroom=True)
    streams = [c for f in report.functions for c in f.chains if c.rule == "fp16_headroom"]
    assert [(c.status, c.form) for c in streams] == [(LEFT_ALONE, "residual stream: 1 add, 1 norm reading it")] * 2
    assert streams[0].reason == (
        "stream 'input_9_cast_fp16' .. 'input_9_cast_fp16' left alone: float64 is NaN at 'input_9_cast_fp16' (the "
        "program as stored computes no number there: mlopt audit says where it starts), so its peak is unmeasured")


def test_one_headroom_run_measures_the_peaks_after_finite_mask(tmp_path):
    """The headroom pass used to measure IN, before the first pass made BERT's mask finite: the streams were left
    alone as unmeasured (float64 NaN) and a second run was needed. It now measures the program the first pass
    produced: one run gives what the two runs gave (the peaks of `audit` of the first run's output)."""
    one = optimize_package(BERT, tmp_path / "one.mlpackage", headroom=True)
    streams = [c for f in one.functions for c in f.chains if c.rule == "fp16_headroom"]
    assert {c.rule for f in one.functions for c in f.chains if c.status == REWRITTEN} == {"finite_mask"}
    peaks = {r.op: r.peak_abs_fp64 for r in audit_package(tmp_path / "one.mlpackage", top=0).rows}
    assert [c.reason for c in streams] == [
        f"ResidualStream: stream '{v}' .. '{v}': float64 peak {peaks[v]:.4g} leaves {np.log2(65504 / peaks[v]):.1f} "
        f"bits below 65504, at least the target 2; alpha = 1, nothing to do" for v in ("input_9_cast_fp16", "input_cast_fp16")]
    # with a target that makes the streams scale: one run, the same rewrite as finite_mask, then --headroom
    fixed = tmp_path / "fixed.mlpackage"
    optimize_package(BERT, fixed)
    two = optimize_package(fixed, tmp_path / "two.mlpackage", rules=(), headroom=True, headroom_target=15)
    one = optimize_package(BERT, tmp_path / "one15.mlpackage", headroom=True, headroom_target=15)
    chains = [[c.to_dict() for f in r.functions for c in f.chains if c.rule == "fp16_headroom"] for r in (one, two)]
    assert chains[0] == chains[1] and [c["status"] for c in chains[0]] == [REWRITTEN] * 2
    feeds = inputs_for(BERT)
    ran = [run_package(tmp_path / f"{n}.mlpackage", feeds) for n in ("one15", "two")]
    assert ran[0].keys() == ran[1].keys() and all(np.isfinite(v).all() for v in ran[0].values())
    for key in ran[0]:
        np.testing.assert_array_equal(ran[0][key], ran[1][key])


def test_t5_mask_added_to_the_position_bias_is_named_too(capsys):
    code, out, _ = cli(capsys, "audit", T5, "--top", "0")
    assert code == 1 and any(line.startswith("  float64 itself is NaN at ") and line.endswith("NaN reaches output 'var_249' (256 elements)")
                             for line in out.splitlines())


def test_headroom_report_of_a_one_add_stream_reads_in_the_singular_and_names_the_stored_epsilon(tmp_path):
    """The BERT after finite_mask, with a target that makes its post-norm streams scale: one add, one norm each.
    LayerNorm's fp16 epsilon is already fp16's smallest subnormal: x 1/4 it would be 0, so it stays there."""
    fixed = tmp_path / "fixed.mlpackage"
    optimize_package(BERT, fixed)
    report = optimize_package(fixed, tmp_path / "out.mlpackage", rules=(), headroom=True, headroom_target=15)
    first = [c for f in report.functions for c in f.chains if c.rule == "fp16_headroom"][0]
    assert first.form == "residual stream: 1 add, 1 norm reading it"
    assert " (1 add), alpha 2^-1, " in first.summary and "1 entry folded into their constants, 1 scaled by an inserted mul, 1 norm with epsilon x 2^-2" in first.summary
    assert ("1 epsilon cannot hold eps x 0.25 exactly in fp16 (e.g. 5.96e-08 x 0.25 = 1.49e-08 -> stored 5.96e-08, "
            "the smallest fp16 subnormal, as 0 would make an all-zero row NaN)") in first.note


def test_epsilon_note_says_nearest_when_the_scaled_value_rounds_to_a_nonzero_neighbour():
    from mlopt.graph.dtypes import FLOAT16
    from mlopt.rules.fp16_headroom import _note, _scaled_epsilon

    eps = np.float16(3e-6)  # 50 * 2^-24: x 1/4 it is 12.5 * 2^-24, stored as its nearest even neighbour 12 * 2^-24
    stored = _scaled_epsilon(np.array([eps]), 0.25, np.float16)[0]
    assert float(stored) != float(eps) * 0.25 and stored > 0
    note = _note(0.5, [(float(eps), float(stored), FLOAT16, 0.25)], 0, FLOAT16)
    assert f"(e.g. {float(eps):.4g} x 0.25 = {float(eps) * 0.25:.4g} -> nearest {float(stored):.4g})" in note


def test_verify_of_two_all_nan_models_says_float64_is_nan_too_not_the_inputs(capsys, tmp_path):
    """Both models NaN everywhere pass as equal (docs/verify.md); the note used to point at the inputs' domain only,
    where the stored program itself computes no number (T5's mask reaches the softmax through the position bias:
    only the norms are rewritten here)."""
    out = tmp_path / "t5.mlpackage"
    optimize_package(T5, out, only=["rms_norm"])
    code, text, _ = cli(capsys, "verify", T5, out)
    (check,) = [line for line in text.splitlines() if line.startswith("  pass  main/")]
    assert code == 0 and check.startswith(
        "  pass  main/var_249: max abs 0, max rel 0 (rtol 0.01, atol 0.01); no element is finite in either model: "
        "nothing was compared (inputs outside the model's domain, such as the log of a negative value? give real ones "
        "with --inputs); float64 is NaN there too: the reference as stored computes no number on these inputs; if real "
        "ones give NaN as well, look for 0 times an fp16 -inf mask sentinel (mlopt audit says where NaN starts)")


LLAMA = fixture_path("llama_input_mask_fp16_ios18", "hf_input_masks")


def test_verify_of_two_all_nan_models_where_float64_has_numbers_does_not_blame_the_inputs(capsys, tmp_path):
    """transformers' padding + causal mask from an input, left as it is (finite_mask skipped): a fully masked
    query row is NaN and spreads to every output; float64 has numbers. Both models NaN pass as equal, and the note
    says float64 computed numbers (the inputs are in the model's domain)."""
    llama = LLAMA
    out = tmp_path / "llama.mlpackage"
    optimize_package(llama, out, skip=["finite_mask"])
    code, text, _ = cli(capsys, "verify", llama, out)
    (check,) = [line for line in text.splitlines() if line.startswith("  pass  main/")]
    assert code == 0 and (
        "no element is finite in either model: nothing was compared, though float64 computes numbers there on these "
        "inputs: both models lose them; against float64: reference inf, candidate inf; the reference departs from the "
        "mathematics: not finite first at op ") in check


def test_llamas_padding_and_causal_mask_is_made_finite_now_that_the_proof_feeds_its_bool_condition(capsys, tmp_path):
    """The select on `padding == 0` (a bool computed from the attention_mask input) used to be refused by the proof
    ("the chain reads 'padding_cast_fp16', bool, which the proof cannot feed"): every output stayed NaN. The proof
    feeds bools as keep/drop masks now: finite_mask rewrites it, and the outputs agree with float64."""
    out = tmp_path / "llama.mlpackage"
    (chain,) = [c for f in optimize_package(LLAMA, out).functions for c in f.chains if c.rule == "finite_mask"]
    assert (chain.status, chain.form, chain.operands["cond"]) == (REWRITTEN, "select -> add -> softmax -> add -> softmax", "padding_cast_fp16")
    feeds = inputs_for(LLAMA)
    before, after = run_package(LLAMA, feeds), run_package(out, feeds)
    (key,) = before
    assert np.isnan(before[key]).all() and np.isfinite(after[key]).all()
    report = audit_package(out, top=0)  # the causal constant still holds -inf where it is compared (== 0), not added
    assert [(f.kind, f.op) for f in report.findings] == [("static", "var_23_to_fp16")] and not any(r.nan for r in report.rows)
    # against float64 (a padded query's row masked entirely held uniform, as the float32 source gives it)
    code, text, _ = cli(capsys, "verify", LLAMA, out)
    (check,) = [line for line in text.splitlines() if line.startswith("  pass  main/")]
    assert code == 0 and check.endswith("the candidate agrees with float64 within tolerance")


def test_a_product_mask_added_to_the_position_bias_is_rewritten(tmp_path):
    """T5 adds `(1 - m) * finfo.min` to its position bias before the scores: the rule used to leave that path alone
    (every output NaN); it now follows the product through that add (tests/test_stacked_masks.py checks the
    numbers)."""
    report = optimize_package(T5, tmp_path / "t5.mlpackage")
    (chain,) = [c for f in report.functions for c in f.chains if c.rule == "finite_mask"]
    assert (chain.status, chain.anchor, chain.form) == (REWRITTEN, "op_91_cast_fp16", "mul -> add -> add -> softmax")
    # BERT's product goes straight to its softmaxes: rewritten, as before
    (chain,) = [c for f in optimize_package(BERT, tmp_path / "b.mlpackage").functions for c in f.chains if c.rule == "finite_mask"]
    assert chain.status == REWRITTEN and chain.form.startswith("mul -> add -> softmax")


@pytest.mark.parametrize("path, mask_form", [
    (BERT, "(1 - m) * fill"),
    (fixture_path("llama_finfo_min_fp16_ios17", "fp16"), "additive mask"),
])
def test_optimize_json_of_a_finite_mask_chain_keeps_the_chain_form_and_validates(capsys, tmp_path, path, mask_form):
    """finite_mask's integer `form` param used to overwrite the chain's form string in --json: schema-invalid."""
    code, out, _ = cli(capsys, "optimize", path, tmp_path / "o.mlpackage", "--json")
    doc = json.loads(out)
    with open(os.path.join(ROOT, "mlopt", "report.schema.json")) as f:
        assert code == 0 and errors(doc, json.load(f)) == []
    chains = [c for f in doc["functions"] for c in f["chains"] if c["rule"] == "finite_mask"]
    report = optimize_package(path, tmp_path / "p.mlpackage")
    forms = [c.form for f in report.functions for c in f.chains if c.rule == "finite_mask"]
    assert chains and [c["form"] for c in chains] == forms and {c["mask_form"] for c in chains} == {mask_form}
    assert all(c["fill"] == -49152 and "rule_form" not in c for c in chains)


def test_a_rule_field_named_like_a_common_chain_field_does_not_replace_it():
    from mlopt.report import ChainReport

    chain = ChainReport("a", "mul -> add", REWRITTEN, rule="r", fields={"form": 3, "fill": -1.0}, operands={"x": "k"})
    d = chain.to_dict()
    assert (d["form"], d["rule_form"], d["fill"], d["x"], d["rule_x"]) == ("mul -> add", 3, -1.0, None, "k")
