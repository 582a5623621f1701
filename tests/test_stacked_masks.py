"""Masks that pass through a second add before the softmax (fixtures/hf_input_masks, make_hf_input_mask_fixtures.py):
T5 adds `(1 - m) * finfo.min` to its position bias, GPT-2's eager attention adds it to `where(causal, w, finfo.min)`.
In fp16 both are NaN everywhere; finite_mask makes every sentinel on the path finite (-49152 for one, -24576 each
for two stacked), and the outputs match the float64 run of the float32 source model (reference.npz, written by the
fixture script from the torch model itself)."""

import os

import numpy as np
import pytest

from conftest import fixture_path, load_in_coremltools, main_view, op_types, run_package, tree_digest
from mlopt import optimize_package
from mlopt.analyses.audit import audit_package
from mlopt.numerics.masked_rows import MASKED, least_masked
from mlopt.report import REWRITTEN
from mlopt.rules import finite_mask

T5 = "t5_input_mask_fp16_ios17"
GPT2 = "gpt2_eager_mask_fp16_ios17"
REFERENCE = np.load(os.path.join(os.path.dirname(fixture_path(T5, "hf_input_masks")), "reference.npz"))
F32_MIN = float(np.finfo(np.float32).min)


def _optimize(name, tmp_path, **kwargs):
    out = tmp_path / f"{name}.mlpackage"
    return str(out), optimize_package(fixture_path(name, "hf_input_masks"), out, **kwargs)


def _mask_chains(report):
    return [(c.status, c.anchor, c.form, c.fill) for f in report.functions for c in f.chains if c.rule == "finite_mask"]


@pytest.mark.parametrize("name", [T5, GPT2])
def test_audit_finds_the_hazard_before_and_nothing_after(tmp_path, name):
    before = audit_package(fixture_path(name, "hf_input_masks"))
    statics = {"t5_input_mask_fp16_ios17": ["var_90_to_fp16"],  # the product's sentinel
               "gpt2_eager_mask_fp16_ios17": ["var_48_to_fp16", "mask_value_1_after_broadcast_to_fp16"]}[name]
    assert sorted(f.op for f in before.findings) == sorted(statics) and {f.kind for f in before.findings} == {"static"}
    assert all(f.detail.startswith("fp16 constant holds") for f in before.findings)
    out, _ = _optimize(name, tmp_path)
    after = audit_package(out)
    assert after.findings == [] and after.passed


@pytest.mark.parametrize("name", [T5, GPT2])
@pytest.mark.parametrize("case", ["padded", "full"])
def test_outputs_match_the_float64_run_of_the_float32_source_where_the_original_was_nan(tmp_path, name, case):
    """Left padding [0, 0, 1, ...]: in GPT-2 query row 0 holds a key both in the future and padded (min + min, -inf
    in float32): the source's row is uniform over the other seven keys."""
    out, _ = _optimize(name, tmp_path)
    feeds = {"input_ids": REFERENCE[f"{name}/input_ids"], "attention_mask": REFERENCE[f"{name}/mask_{case}"]}
    (original,) = run_package(fixture_path(name, "hf_input_masks"), feeds).values()
    (rewritten,) = run_package(out, feeds).values()
    truth = REFERENCE[f"{name}/out_{case}"]
    assert original.dtype == np.float16 and np.isnan(original).all()
    assert rewritten.dtype == np.float16 and np.isfinite(rewritten).all()
    np.testing.assert_allclose(rewritten.astype(np.float64), truth, rtol=0, atol=1e-2)


def test_t5_product_is_rewritten_through_the_position_bias_add(tmp_path):
    out, report = _optimize(T5, tmp_path, only=["finite_mask"])
    assert _mask_chains(report) == [(REWRITTEN, "op_91_cast_fp16", "mul -> add -> add -> softmax", -49152.0)]
    source = fixture_path(T5, "hf_input_masks")
    assert op_types(out) == op_types(source)  # only the sentinel constant changed
    view = main_view(out)
    (mul,) = [op for op in view.main.operations if op.type == "mul" and view.op_name(op) == "op_91_cast_fp16"]
    assert float(view.const(mul, "y")) == -49152.0


def test_gpt2_select_fill_and_product_are_both_made_finite_at_half_the_fill(tmp_path):
    out, report = _optimize(GPT2, tmp_path)
    assert _mask_chains(report) == [
        (REWRITTEN, "attention_mask_cast_fp16", "mul -> add -> softmax -> add -> softmax", -24576.0),
        (REWRITTEN, "mask_value_1_after_broadcast_to_fp16", "const -> select -> add -> softmax -> select -> add -> softmax",
         -24576.0)]
    assert op_types(out) == op_types(fixture_path(GPT2, "hf_input_masks"))
    view = main_view(out)
    selects = [op for op in view.main.operations if op.type == "select" and view.dtype(view.output(op)) == finite_mask.FLOAT16]
    assert len(selects) == 2
    for select in selects:
        fill = view.const(select, "b")
        assert fill.dtype == np.float16 and fill.size == 64 * 2 and set(np.unique(fill).tolist()) == {-24576.0}
    # two stacked sentinels: 2 * -24576 is finite in fp16, and so is the sum with any score above -16368
    assert np.isfinite(np.float16(-24576.0) + np.float16(-24576.0) + np.float16(-16000.0))


@pytest.mark.parametrize("name", [T5, GPT2])
def test_the_proof_rejects_a_fill_that_does_not_mask(tmp_path, monkeypatch, name):
    """A fill of -4 lets masked keys through: the proof (REGION, at every softmax) catches it, nothing is rewritten."""
    real = finite_mask.finite_sentinels
    monkeypatch.setattr(finite_mask, "finite_sentinels", lambda mask, fill: real(mask, -4.0))
    out, report = _optimize(name, tmp_path)
    chains = [c for f in report.functions for c in f.chains if c.rule == "finite_mask"]
    assert chains and all(c.status != REWRITTEN for c in chains)
    assert all(c.reason.startswith("proof failed: the rewrite differs from the MaskedSoftmax chain") for c in chains)


@pytest.mark.parametrize("name", [T5, GPT2])
def test_output_loads_in_coremltools_and_is_the_same_bytes_twice(tmp_path, name):
    first, _ = _optimize(name, tmp_path / "a")
    second, _ = _optimize(name, tmp_path / "b")
    assert load_in_coremltools(first) is not None
    assert tree_digest(first) == tree_digest(second)


def _rows(*rows):
    return np.array([rows], np.float64)  # (1, rows, keys): softmax along the last axis


def test_masked_rows_one_sentinel_per_entry_is_uniform():
    rows, top = least_masked(_rows([F32_MIN + 1.5, F32_MIN - 0.5, F32_MIN], [0.3, F32_MIN, -1.0]), -1)
    assert rows.reshape(-1).tolist() == [True, False]
    assert top[0, 0].tolist() == [True, True, True]


def test_masked_rows_stacked_entries_get_zero_as_in_float32():
    """GPT-2, query 0 with keys 0 and 1 padded: key 1 is also in the future (min + min: -inf in float32, 0 after
    softmax); finite_mask's rewrite holds -24576 + s and -49152 + s there."""
    for single, double in ((F32_MIN, 2 * F32_MIN), (-24576.0, -49152.0)):
        row = [single + 0.7, double - 0.2, single - 1.1, single + 3.0]
        rows, top = least_masked(_rows(row), -1)
        assert rows.all() and top[0, 0].tolist() == [True, False, True, True]
    with np.errstate(over="ignore"):
        assert float(np.float32(F32_MIN) + np.float32(F32_MIN)) == -np.inf  # what float32 itself computes


def test_masked_rows_every_entry_stacked_or_infinite_is_uniform():
    for row in ([2 * F32_MIN, 2 * F32_MIN - 5.0], [-np.inf, -np.inf], [-49152.0 + 1, -49152.0 - 2]):
        rows, top = least_masked(_rows(row), -1)
        assert rows.all() and top.all()


def test_masked_rows_threshold_keeps_apples_minus_1e4_out():
    assert least_masked(_rows([-1e4, -1e4 + 3.0]), -1)[0].tolist() == [[[False]]] and MASKED == -16384.0


def _masked_program(tmp_path, name, body):
    """An fp16 program softmax(body(scores, expand_dims((1 - m) * -inf))), scores (1, 8, 8) and m (1, 8) inputs."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 8, 8), dtype=ct.converters.mil.mil.types.fp16),
                             mb.TensorSpec(shape=(1, 8), dtype=ct.converters.mil.mil.types.fp16)],
                opset_version=ct.target.iOS17)
    def prog(x, m):
        product = mb.mul(x=mb.sub(x=np.float16(1), y=m), y=np.float16(-np.inf))
        return mb.softmax(x=body(mb, x, mb.expand_dims(x=product, axes=[1])), axis=-1)

    path = str(tmp_path / f"{name}.mlpackage")
    ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
               pass_pipeline=ct.PassPipeline.EMPTY, skip_model_load=True).save(path)
    return path


def _causal(value):
    return np.where(np.tri(8, dtype=bool), np.float16(0), np.float16(value)).reshape(1, 8, 8).astype(np.float16)


@pytest.mark.parametrize("body, reason", [
    (lambda mb, x, e: mb.add(x=x, y=mb.add(x=_causal(0.5), y=mb.add(x=_causal(0.25), y=e))),
     "it is added to more than one other tensor before a softmax"),
    (lambda mb, x, e: mb.add(x=x, y=mb.add(x=_causal(-np.inf), y=e)),
     "(1 - m) * sentinel is added to 'add_0_x_0', which holds a mask sentinel too (a constant with 28 sentinel(s)): two "
     "stacked sentinels are not rewritten by this form"),
])
def test_stacked_forms_the_rule_does_not_rewrite_are_left_alone_with_the_reason(tmp_path, body, reason):
    src = _masked_program(tmp_path, "in", body)
    report = optimize_package(src, tmp_path / "out.mlpackage")
    (chain,) = [c for f in report.functions for c in f.chains if c.rule == "finite_mask"]
    assert chain.status != REWRITTEN and reason in chain.reason


def test_a_stacked_select_fill_of_fp16_min_is_made_finite_too(tmp_path):
    """-65504 is finite in fp16, but -65504 + (1 - m) * fill overflows: the select's fill is a stacked sentinel."""
    src = _masked_program(tmp_path, "in", lambda mb, x, e: mb.add(
        x=mb.select(cond=np.tri(8, dtype=bool).reshape(1, 8, 8), a=x, b=np.full((1, 8, 8), -65504, np.float16)), y=e))
    out = tmp_path / "out.mlpackage"
    report = optimize_package(src, out)
    assert [(c.status, c.fill) for c in report.functions[0].chains if c.rule == "finite_mask"] == \
        [(REWRITTEN, -24576.0), (REWRITTEN, -24576.0)]
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 8, 8)).astype(np.float16),
             "m": np.array([[0, 0, 1, 1, 1, 1, 1, 1]], np.float16)}
    (probs,) = run_package(str(out), feeds).values()
    assert np.isfinite(probs).all()
    # query 0: key 1 is in the future and padded (two sentinels: 0), the other seven keys one sentinel each
    np.testing.assert_allclose(probs[0, 0].astype(np.float64), [1 / 7, 0, *[1 / 7] * 6], atol=2e-3)
