"""finite_mask: mask sentinels fp16 cannot hold, replaced by a finite fill before the softmax (fixtures from
fixtures/make_fp16_fixtures.py, which cites the model code each mask copies)."""

import json
import os
import sys

import numpy as np
import pytest

from conftest import FIXTURES, chains, fixture_path, inputs_for, main_view, mb_builder_ops, op_types, run_package, tree_digest
from mlopt import optimize_package
from mlopt.package import read_package
from mlopt.rules import finite_mask
from mlopt.rules.finite_mask import FILL, FiniteMaskRule

sys.path.insert(0, FIXTURES)
import make_fp16_fixtures as made  # noqa: E402  (the masks the fixtures were built from)

EXPECTED = json.load(open(os.path.join(FIXTURES, "fp16", "expected.json")))
REWRITTEN = sorted(n for n, e in EXPECTED.items() if e["masks"] and "input_mask" not in e and "layers" not in e)  # one
# layer each; the masks several layers share have tests/rules/test_finite_mask_shared.py
NEGATIVES = sorted(n for n, e in EXPECTED.items() if e["negative"])
F32_MIN = float(np.finfo(np.float32).min)


def source_attention(feeds, mask):
    """The float32 source model's meaning in float64: a sentinel swallows the score added to it (as float32's
    minimum does in float32), so masked entries are 0 and a fully masked row is uniform."""
    q, k, v = (np.asarray(feeds[n], np.float64) for n in ("q", "k", "v"))
    scores = q @ np.swapaxes(k, -1, -2) * made.DIM ** -0.5
    mask = np.broadcast_to(np.asarray(mask, np.float64), scores.shape)
    total = np.where(mask < FILL, F32_MIN, scores + mask)
    e = np.exp(total - total.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)) @ v


def mask_of(name):
    family = name.split("_fp16_")[0].split("_fp32_")[0].split("_cast_mixed_")[0]
    if family == "nanogpt_masked_fill_neg_inf":  # select(causal, -inf, scores): the additive causal mask's meaning
        return made.causal(-np.inf)
    return made.MASKS[family][0]


@pytest.mark.parametrize("name", REWRITTEN)
def test_hazardous_masks_are_rewritten_and_match_the_float32_source(name, tmp_path):
    folder_name = "fp16"
    src, out = fixture_path(name, folder_name), str(tmp_path / "out.mlpackage")
    report = optimize_package(src, out)
    (chain,) = [c for c in chains(report) if c.rule == "finite_mask"]
    assert chain.status == "rewritten", chain.reason
    expected = op_types(src)
    if name.endswith("_cast_mixed_ios17"):
        expected.remove("cast")  # the fp32 mask's cast to fp16 goes: the finite mask is an fp16 constant
    assert op_types(out) == expected  # otherwise the same ops: only the mask constant changed
    feeds = inputs_for(src)
    before, after = run_package(src, feeds), run_package(out, feeds)
    (output,) = after
    truth = source_attention(feeds, mask_of(name))
    assert np.isfinite(after[output]).all()
    np.testing.assert_allclose(after[output].astype(np.float64), truth, rtol=2e-2, atol=2e-2)
    if EXPECTED[name]["fully_masked_rows"]:
        assert np.isnan(before[output]).any()  # the original fp16 program: NaN from the row masked entirely
        assert "1 row(s) masked entirely: NaN in the fp16 original, uniform after the rewrite" in chain.note


def stored_mask(path):
    """Every float constant of the program that holds FILL (the rewritten mask: an immediate constant)."""
    from mlopt.graph.spec_graph import SpecGraph

    view = SpecGraph("main", read_package(path).spec.mlProgram.functions["main"])
    found = [np.asarray(view.const_value(v)) for v in view.types if view.is_const(v)]
    return [d for d in found if d.dtype.kind == "f" and (d == FILL).any()]


def test_the_sentinel_becomes_the_fill_and_nothing_else_changes(tmp_path):
    src, out = fixture_path("nn_transformer_neg_inf_fp16_ios17", "fp16"), str(tmp_path / "out.mlpackage")
    optimize_package(src, out)
    (mask,) = stored_mask(out)
    expected = np.where(made.CAUSAL, FILL, 0.0).reshape(1, 1, made.SEQ, made.SEQ)
    np.testing.assert_array_equal(mask.astype(np.float64), expected)
    assert mask.dtype == np.float16


@pytest.mark.parametrize("name", NEGATIVES)
def test_healthy_masks_are_left_byte_identical(name, tmp_path):
    src, out = fixture_path(name, "fp16"), str(tmp_path / "out.mlpackage")
    # not a candidate (a finite mask, or a mask of the fp32 source's own semantics): no report line per layer
    assert chains(optimize_package(src, out), rule="finite_mask") == []
    assert tree_digest(out) == tree_digest(src)


def zero_fill(self, b, m):
    """The deliberately wrong replacement: the sentinel replaced by 0, so masked positions are attended to."""
    mask = b.constant_value(m.operands["mask"])
    finite = b.const(np.where(np.asarray(mask, np.float64) < m.params["fill"], 0.0, mask), m.dtype)
    return b.elementwise("softmax", b.add(m.x, finite), axis=int(m.axes[0]))


def keeps_minus_inf(self, b, m):
    """Another wrong one: the mask left as it is (fully masked rows stay NaN)."""
    mask = b.constant_value(m.operands["mask"])
    return b.elementwise("softmax", b.add(m.x, b.const(mask, m.dtype)), axis=int(m.axes[0]))


@pytest.mark.parametrize("wrong,name", [(zero_fill, "llama_finfo_min_fp16_ios17"),
                                        (zero_fill, "nanogpt_masked_fill_neg_inf_fp16_ios17"),
                                        (keeps_minus_inf, "padded_query_full_row_fp16_ios17")])
def test_the_proof_fed_the_real_mask_rejects_a_wrong_replacement(wrong, name, monkeypatch, tmp_path):
    monkeypatch.setattr(FiniteMaskRule, "lower", wrong)
    src, out = fixture_path(name, "fp16"), str(tmp_path / "out.mlpackage")
    (chain,) = chains(optimize_package(src, out, rules=(FiniteMaskRule(),)))
    assert chain.status == "left alone"
    assert chain.reason.startswith("proof failed: the rewrite differs from the MaskedSoftmax chain") and \
        chain.reason.endswith("; rolled back"), chain.reason
    assert tree_digest(out) == tree_digest(src)


def test_the_fill_is_exact_in_fp16_and_its_arithmetic_holds():
    """What the rule's docstring claims, in numpy's IEEE fp16 arithmetic."""
    fill = np.float16(FILL)
    assert float(fill) == FILL
    scores = np.arange(-15.5, 16, 0.5, dtype=np.float16)
    assert ((fill + scores) == fill).all()  # absorbed: a fully masked row is uniform for |s| < 16
    with np.errstate(over="ignore"):
        assert np.isfinite(fill + np.float16(-16352)) and np.isneginf(fill + np.float16(-16368))
        assert np.isneginf(np.float16(-65504) + np.float16(-17))  # why not fp16's minimum
    assert np.exp(np.float32(FILL + 100)).astype(np.float16) == 0
    assert finite_mask.RULE.name == "finite_mask"


# -- infinite bounds (finite_bounds) and infinite constants elsewhere ---------------------------------------------------

import coremltools as ct  # noqa: E402
from coremltools.converters.mil import Builder as mb  # noqa: E402
from coremltools.converters.mil.mil import types  # noqa: E402

from mlopt.rules.finite_bounds import FiniteBoundsRule  # noqa: E402


def saved(tmp_path, body, dtype=types.fp16, name="in"):
    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 8), dtype=dtype)], opset_version=ct.target.iOS17)
    def prog(x):
        return body(x, np.float16 if dtype == types.fp16 else np.float32)

    path = str(tmp_path / f"{name}.mlpackage")
    ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
               pass_pipeline=ct.PassPipeline.EMPTY, skip_model_load=True).save(path)
    return path


def bounded(x, f):
    a = mb.clip(x=x, alpha=f(-np.inf), beta=f(6))
    b = mb.maximum(x=a, y=f(-np.inf))
    return mb.minimum(x=f(np.inf), y=b)


def test_infinite_bounds_become_fp16_max(tmp_path):
    src, out = saved(tmp_path, bounded), str(tmp_path / "out.mlpackage")
    report = optimize_package(src, out)
    assert [c.status for c in chains(report, rule="finite_bounds")] == ["rewritten"] * 3
    assert op_types(out) == ["clip", "maximum", "minimum"]
    from mlopt.graph.spec_graph import SpecGraph

    view = SpecGraph("main", read_package(out).spec.mlProgram.functions["main"])
    bounds = sorted(float(view.const(op, p)) for op in view.ops() for p in ("alpha", "beta", "y", "x")
                    if view.op_type(op) in ("clip", "maximum", "minimum") and view.const(op, p) is not None)
    assert bounds == [-65504.0, -65504.0, 6.0, 65504.0]
    feeds = {"x": np.array([[-np.inf, np.inf, -3, 0, 2, 7, -65504, 1]] * 2, np.float16)}
    before, after = run_package(src, feeds), run_package(out, feeds)
    (name,) = after
    np.testing.assert_array_equal(after[name][:, 2:], before[name][:, 2:])  # every finite input: the same result
    assert before[name][0, 0] == -np.inf and after[name][0, 0] == -65504  # -inf no longer passes through


def test_infinite_bounds_of_an_fp32_program_are_left_alone(tmp_path):
    src, out = saved(tmp_path, bounded, dtype=types.fp32), str(tmp_path / "out.mlpackage")
    assert chains(optimize_package(src, out), rule="finite_bounds") == []
    assert tree_digest(out) == tree_digest(src)


def test_a_wrong_bound_fails_the_proof(monkeypatch, tmp_path):
    monkeypatch.setattr(FiniteBoundsRule, "lower", lambda self, b, m: b.elementwise("clip", m.x, alpha=0.0, beta=6.0))
    src = saved(tmp_path, lambda x, f: mb.clip(x=x, alpha=f(-np.inf), beta=f(6)))
    (chain,) = chains(optimize_package(src, dry_run=True, rules=(FiniteBoundsRule(),)))
    assert chain.status == "left alone" and chain.reason.startswith("proof failed: the rewrite differs from the InfiniteBound chain")


def test_an_infinite_constant_elsewhere_is_left_alone_with_the_reason(tmp_path):
    src = saved(tmp_path, lambda x, f: mb.mul(x=x, y=np.full(8, np.inf, f)))
    out = str(tmp_path / "out.mlpackage")
    (chain,) = chains(optimize_package(src, out), rule="finite_mask")
    assert (chain.status, chain.reason) == ("left alone", "InfiniteConstant: infinite in fp16, read by mul: not a mask before a "
                                            "softmax nor a clip/maximum/minimum bound, so its meaning there is the model's own")
    assert tree_digest(out) == tree_digest(src)


def test_the_select_form_keeps_its_select_and_loads_in_coremltools(tmp_path):
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load

    src, out = fixture_path("nanogpt_masked_fill_neg_inf_fp16_ios17", "fp16"), str(tmp_path / "out.mlpackage")
    (chain,) = chains(optimize_package(src, out), rule="finite_mask")
    assert chain.status == "rewritten"
    # this program stores no weight: its empty weights/ folder, which git does not keep, is not read
    package = read_package(out)
    package.close()
    spec = package.spec
    program = milproto_load(spec, spec.specificationVersion, os.path.join(out, "Data", "com.apple.CoreML", "weights"))
    ops = [op for op in program.functions["main"].operations if op.op_type != "const"]
    assert [op.op_type for op in ops] == ["matmul", "mul", "select", "softmax", "matmul"]
    (select,) = [op for op in ops if op.op_type == "select"]
    assert float(select.a.val) == FILL and select.b.op.op_type == "mul"  # the fill where the condition holds


def test_the_mb_builder_emits_select():
    from mlopt.graph.dtypes import FLOAT32

    def emit(builder, x):
        return builder.select(mb.const(val=np.tri(2, 8, dtype=bool)), x, builder.const(np.float32(FILL), FLOAT32))

    assert mb_builder_ops(emit) == ["select"]


def test_a_mask_from_the_input_times_the_sentinel_is_rewritten_at_the_product(tmp_path):
    """transformers' `(1.0 - attention_mask) * finfo.min`: in fp16 0 * -inf is NaN at every kept position."""
    name = "hf_input_mask_min_fp16_ios17"
    src, out = fixture_path(name, "fp16"), str(tmp_path / "out.mlpackage")
    (chain,) = chains(optimize_package(src, out), rule="finite_mask")
    assert chain.status == "rewritten", chain.reason
    assert "assuming" in chain.note and "holds only 0 and 1" in chain.note
    assert op_types(out) == op_types(src)  # the sentinel constant changed, nothing else
    feeds = inputs_for(src)
    feeds["attention_mask"] = np.array([[1, 1, 1, 1, 0, 0]], feeds["attention_mask"].dtype)
    before, after = run_package(src, feeds), run_package(out, feeds)
    (output,) = after
    assert np.isnan(before[output]).all()
    padding = np.where(feeds["attention_mask"] == 0, F32_MIN, 0.0).reshape(1, 1, 1, made.SEQ)
    first = source_attention(feeds, padding)  # two layers share the mask: the second reads the first as q
    truth = source_attention({**feeds, "q": first}, padding)
    np.testing.assert_allclose(after[output].astype(np.float64), truth, rtol=3e-2, atol=3e-2)


def test_the_product_form_proof_rejects_a_zero_fill(monkeypatch, tmp_path):
    original = FiniteMaskRule.lower

    def zero_product(self, b, m):
        if int(m.params["form"]) != 3:
            return original(self, b, m)
        return b.mul(m.operands["keep"], b.const(np.zeros(np.shape(b.constant_value(m.operands["mask"]))), b.dtype(m.operands["mask"])))

    monkeypatch.setattr(FiniteMaskRule, "lower", zero_product)
    src, out = fixture_path("hf_input_mask_min_fp16_ios17", "fp16"), str(tmp_path / "out.mlpackage")
    (chain,) = chains(optimize_package(src, out, rules=(FiniteMaskRule(),)))
    assert chain.status == "left alone" and chain.reason.startswith("proof failed: the rewrite differs from the MaskedSoftmax chain")


def test_at_conversion_time_an_fp16_typed_program_is_rewritten(tmp_path):
    """mlopt.convert: the fusion sees the softmax in fp16 only when the program is typed fp16 before conversion
    (coremltools' fp16 casts come after mlopt's fusions); then the row masked entirely is no longer NaN."""
    from mlopt.coreml import convert

    def prog():
        return made.attention(made.full_row(-np.inf).astype(np.float16), dtype=types.fp16)

    kwargs = dict(convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17, skip_model_load=True,
                  compute_precision=ct.precision.FLOAT16)
    converted, plain = str(tmp_path / "converted.mlpackage"), str(tmp_path / "plain.mlpackage")
    convert(prog(), compute_units=ct.ComputeUnit.CPU_ONLY, rules=(FiniteMaskRule(),), **kwargs).save(converted)
    ct.convert(prog(), **kwargs).save(plain)
    feeds = inputs_for(plain)
    before, after = run_package(plain, feeds), run_package(converted, feeds)
    (output,) = after
    assert np.isnan(before[output]).any() and np.isfinite(after[output]).all()
    truth = source_attention(feeds, made.full_row(F32_MIN))
    np.testing.assert_allclose(after[output].astype(np.float64), truth, rtol=2e-2, atol=2e-2)


# -- the "Done when", over the fp16 fixture sets --------------------------------------------------------------

from mlopt.analyses.audit import audit_package  # noqa: E402

HAZARDOUS = sorted(n for n, e in EXPECTED.items() if e["masks"])
HEALTHY = sorted(n for n, e in EXPECTED.items() if not e["masks"])
AUDIT_MASKS = ["mask_1e9_fp16_ios17", "mask_f32min_fp16_ios17", "mask_neginf_fp16_ios17"]  # fixtures/audit


def float64_reference(name, feeds):
    """The float32 source model's outputs, in float64, on `feeds`."""
    if "layers" in EXPECTED[name]:  # several layers sharing one mask
        from test_finite_mask_shared import layered_reference

        return layered_reference(name, feeds)
    if "input_mask" in EXPECTED[name]:  # two layers share (1 - attention_mask) * min, the second reads the first as q
        padding = np.where(feeds["attention_mask"] == 0, F32_MIN, 0.0).reshape(1, 1, 1, made.SEQ)
        return source_attention({**feeds, "q": source_attention(feeds, padding)}, padding)
    return source_attention(feeds, mask_of(name))


@pytest.mark.parametrize("name", HAZARDOUS)
def test_done_when_the_audit_finds_the_hazard_before_the_rewrite_and_none_after(name, tmp_path):
    src, out = fixture_path(name, "fp16"), str(tmp_path / "out.mlpackage")
    before = audit_package(src)
    assert not before.passed
    assert any(f.kind == "static" for f in before.findings)  # the sentinel fp16 cannot hold
    optimize_package(src, out)
    after = audit_package(out)
    assert after.passed, [f"{f.kind} {f.op}: {f.detail}" for f in after.findings]
    feeds = inputs_for(src)  # the audit's own inputs: a mask input holds 0s and 1s
    original, rewritten = run_package(src, feeds), run_package(out, feeds)
    (output,) = rewritten
    truth = float64_reference(name, feeds)
    np.testing.assert_allclose(rewritten[output].astype(np.float64), truth, rtol=2e-2, atol=2e-2)
    broken = ~np.isfinite(original[output])
    if "layers" in EXPECTED[name]:  # NaN in the original exactly where the mask fed masks a row entirely
        from test_finite_mask_shared import reference_mask

        masked = np.broadcast_to(reference_mask(name, feeds) < FILL, (1, 1, made.SEQ, made.SEQ))
        assert broken.any() == bool(masked.all(axis=-1).any())
    else:
        assert broken.any() == bool(EXPECTED[name]["fully_masked_rows"] or "input_mask" in EXPECTED[name])


@pytest.mark.parametrize("name", HEALTHY)
def test_done_when_healthy_masks_pass_the_audit_and_are_written_back_byte_identical(name, tmp_path):
    src, out = fixture_path(name, "fp16"), str(tmp_path / "out.mlpackage")
    assert audit_package(src).passed
    optimize_package(src, out)
    assert tree_digest(out) == tree_digest(src)


@pytest.mark.parametrize("name", AUDIT_MASKS)
def test_done_when_for_a_mask_computed_from_the_input(name, tmp_path):
    """transformers' AttentionMaskConverter chains (fixtures/make_audit_fixtures.py): the sentinel fills a select
    computed from the attention_mask input; the audit's random 0/1 mask with the causal mask leaves query rows
    masked entirely, NaN in the original."""
    src, out = fixture_path(name, "audit"), str(tmp_path / "out.mlpackage")
    before = audit_package(src)
    assert "nonfinite" in {f.kind for f in before.findings} and before.masked and all(m.nan for m in before.masked)
    (chain,) = chains(optimize_package(src, out), rule="finite_mask")
    assert chain.status == "rewritten" and chain.form == "select -> add -> softmax", chain.reason
    after = audit_package(out)
    assert after.passed, [f"{f.kind} {f.op}: {f.detail}" for f in after.findings]
    assert [(m.rows, m.nan, m.uneven) for m in after.masked] == [(m.rows, 0, 0) for m in before.masked]
    # every output within verify's fp16 tolerance of the float64 run, fully masked rows held to the uniform row
    outputs = set(main_view(out).main.outputs)
    assert [r.error <= 1e-2 for r in after.rows if r.op in outputs] == [True] * len(outputs)
    original = run_package(src, inputs_for(src))
    assert not all(np.isfinite(v).all() for v in original.values())  # the original: NaN in the masked rows


def norms_and_mask(tmp_path):
    """An fp16 program with an RMSNorm, attention under a -inf causal mask, and a LayerNorm (decomposed)."""
    seq, width, f = 6, 16, np.float16

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, seq, width), dtype=types.fp16)], opset_version=ct.target.iOS17)
    def prog(x):
        r = mb.rsqrt(x=mb.add(x=mb.reduce_mean(x=mb.pow(x=x, y=f(2)), axes=[-1], keep_dims=True), y=f(1e-5)))
        h = mb.mul(x=mb.mul(x=x, y=r), y=np.linspace(0.5, 1.5, width).astype(f))
        mask = np.where(np.triu(np.ones((seq, seq), bool), 1), f(-np.inf), f(0)).reshape(1, seq, seq)
        scores = mb.add(x=mb.mul(x=mb.matmul(x=h, y=h, transpose_y=True), y=f(0.25)), y=mask)
        a = mb.matmul(x=mb.softmax(x=scores, axis=-1), y=h)
        d = mb.sub(x=a, y=mb.reduce_mean(x=a, axes=[-1], keep_dims=True))
        n = mb.mul(x=d, y=mb.rsqrt(x=mb.add(x=mb.reduce_mean(x=mb.mul(x=d, y=d), axes=[-1], keep_dims=True), y=f(1e-5))))
        return mb.add(x=mb.mul(x=n, y=np.linspace(1.5, 0.5, width).astype(f)), y=np.linspace(-0.1, 0.1, width).astype(f))

    path = str(tmp_path / "in.mlpackage")
    ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
               pass_pipeline=ct.PassPipeline.EMPTY, skip_model_load=True).save(path)
    return path


def test_done_when_finite_mask_composes_with_the_norms_in_either_order(tmp_path):
    src = norms_and_mask(tmp_path)
    before = audit_package(src, scale=300)  # x^2 of inputs of 300 passes 65504: the RMSNorm's hazard
    assert [(f.kind, f.op) for f in before.findings] == [("static", "add_1_y_0"), ("overflow", "pow_0"),
                                                        ("nonfinite", "mul_4"), ("underflow", "add_2")]
    outputs = []
    for order in (("finite_mask",), ("rms_norm", "layer_norm")), (("rms_norm", "layer_norm"), ("finite_mask",)):
        middle, out = str(tmp_path / f"{order[0][0]}_1.mlpackage"), str(tmp_path / f"{order[0][0]}_2.mlpackage")
        first, second = optimize_package(src, middle, only=order[0]), optimize_package(middle, out, only=order[1])
        rewritten = sorted(c.rule for report in (first, second) for c in chains(report) if c.status == "rewritten")
        assert rewritten == ["finite_mask", "layer_norm", "rms_norm"]
        assert audit_package(out, scale=300).passed
        outputs.append(out)
    assert tree_digest(outputs[0]) == tree_digest(outputs[1])  # the same package, whichever rule ran first
    # the RMSNorm as the LayerNorm trick (a mirrored concat into layer_norm), the mask a constant, the LayerNorm native
    assert op_types(outputs[0]) == ["mul", "concat", "layer_norm", "slice_by_index", "mul", "matmul", "mul", "add",
                                    "softmax", "matmul", "layer_norm"]


def test_the_report_says_which_behaviour_a_row_masked_entirely_gets(tmp_path):
    """The issue: a fully masked row is NaN in the fp16 original and uniform in the fp32 source; the note says
    which one the rewrite gives, for every form."""
    (chain,) = chains(optimize_package(fixture_path("hf_input_mask_min_fp16_ios17", "fp16"), dry_run=True), rule="finite_mask")
    assert chain.note == (
        "(1 - m) * sentinel: the sentinel replaced by -49152, assuming 'sub_0_cast_fp16' holds only 0 and 1 (an "
        "attention mask; the proof feeds it so): in fp16 0 * -inf was NaN at every position the mask keeps; a row that "
        "m drops entirely is uniform after the rewrite (the float32 source's behaviour, for scores between -16 and 16), "
        "where the fp16 original gave NaN")
    (chain,) = chains(optimize_package(fixture_path("padded_query_full_row_fp16_ios17", "fp16"), dry_run=True), rule="finite_mask")
    assert chain.note == (
        "19 sentinel(s) replaced by -49152 (finite in fp16; masked probabilities stay 0); 1 row(s) masked entirely: NaN "
        "in the fp16 original, uniform after the rewrite (the float32 source's behaviour, for scores between -16 and 16)")
    keep = np.tri(4, dtype=bool)
    keep[2] = False  # row 2 keeps nothing
    from mlopt.rules.finite_mask import KEEP_WHERE_FALSE, KEEP_WHERE_TRUE, mask_note

    assert mask_note(np.float16(-np.inf), 1, 1, 2, KEEP_WHERE_TRUE, keep) == (
        "1 sentinel(s) replaced by -49152 (finite in fp16; masked probabilities stay 0); 1 row(s) masked entirely: NaN "
        "in the fp16 original, uniform after the rewrite (the float32 source's behaviour, for scores between -16 and 16)")
    assert mask_note(np.float16(-np.inf), 1, 1, 2, KEEP_WHERE_FALSE, ~np.tri(4, dtype=bool)) == (
        "1 sentinel(s) replaced by -49152 (finite in fp16; masked probabilities stay 0)")
    assert mask_note(np.float16(-np.inf), 1, 1, 2, KEEP_WHERE_TRUE, None) == (
        "1 sentinel(s) replaced by -49152 (finite in fp16; masked probabilities stay 0); a row that the condition "
        "masks entirely is uniform after the rewrite (the float32 source's behaviour, for scores between -16 and 16), "
        "where the fp16 original gave NaN")


def test_the_computed_mask_proof_rejects_a_fill_that_attends_to_masked_positions(monkeypatch, tmp_path):
    """The select's sentinel made 0 instead of the fill: masked keys get attended to; the proof, fed the padding
    from {0, 1} through the cast to bool, rolls it back."""
    from dataclasses import replace

    original = FiniteMaskRule.lower
    monkeypatch.setattr(FiniteMaskRule, "lower", lambda self, b, m: original(self, b, replace(m, params={**m.params, "fill": 0.0})))
    src, out = fixture_path("mask_f32min_fp16_ios17", "audit"), str(tmp_path / "out.mlpackage")
    (chain,) = chains(optimize_package(src, out, rules=(FiniteMaskRule(),)))
    assert chain.status == "left alone"
    assert chain.reason.startswith("proof failed: the rewrite differs from the MaskedSoftmax chain"), chain.reason
    assert tree_digest(out) == tree_digest(src)


def test_a_computed_mask_shared_by_two_layers_is_made_finite_once(tmp_path):
    """Both layers read one select(cond, -inf, causal): one match rewrites that select once (finite branches) and
    both layers' adds keep reading the one rewritten select; the audit of the result is clean."""
    seq, width, f = 6, 8, np.float16

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, seq, width), dtype=types.fp16),
                             mb.TensorSpec(shape=(1, 1, 1, seq), dtype=types.fp16)], opset_version=ct.target.iOS17)
    def prog(x, m):
        inv = mb.sub(x=f(1), y=m)
        pad = mb.select(cond=mb.cast(x=inv, dtype="bool"), a=f(-np.inf), b=inv)
        causal = np.where(np.triu(np.ones((seq, seq), bool), 1), f(-np.inf), f(0)).reshape(1, 1, seq, seq)
        mask = mb.select(cond=mb.cast(x=pad, dtype="bool"), a=f(-np.inf), b=causal)
        h = mb.expand_dims(x=x, axes=[1])
        for _ in range(2):
            h = mb.matmul(x=mb.softmax(x=mb.add(x=mb.matmul(x=h, y=h, transpose_y=True), y=mask), axis=-1), y=h)
        return h

    src, out = str(tmp_path / "in.mlpackage"), str(tmp_path / "out.mlpackage")
    ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
               pass_pipeline=ct.PassPipeline.EMPTY, skip_model_load=True).save(src)
    assert not audit_package(src).passed
    found = chains(optimize_package(src, out), rule="finite_mask")
    assert [c.status for c in found] == ["rewritten"], [c.reason for c in found]
    assert found[0].note.startswith("one mask shared by 2 softmaxes, rewritten once at ")
    assert op_types(out) == op_types(src)  # the padding select and the one mask select, no copy per layer
    view = main_view(out)
    adds = [op for op in view.ops() if view.op_type(op) == "add"]
    (mask,) = {view.arg(a, "y") for a in adds}  # every layer reads the one rewritten select
    assert view.op_type(view.producer(mask)) == "select"
    assert float(view.const_value(view.arg(view.producer(mask), "a"))) == FILL
    assert audit_package(out).passed


def triu_of_fill(x, f, sentinel=-np.inf):
    """torch.triu(torch.full(x.shape, sentinel), 1) + x, then softmax, as coremltools converts it when the shape is
    known only at run time (frontend/torch/ops.py `triu`: x - band_part(x, -1, diagonal - 1))."""
    filled = mb.fill(shape=mb.shape(x=x), value=f(sentinel))
    mask = mb.sub(x=filled, y=mb.band_part(x=filled, lower=-1, upper=0))
    return mb.softmax(x=mb.add(x=x, y=mask), axis=-1)


@pytest.mark.parametrize("sentinel", [-np.inf, F32_MIN])  # float32's minimum is -inf once stored in fp16
def test_a_triu_of_an_infinite_fill_is_left_alone_naming_the_nan(tmp_path, sentinel):
    """The fill constant of coremltools' runtime-shape triu is named for what it does (NaN wherever the band keeps
    a position), not "its meaning there is the model's own"; the program computes NaN in every element."""
    src = saved(tmp_path, lambda x, f: triu_of_fill(x, f, sentinel))
    out = str(tmp_path / "out.mlpackage")
    (chain,) = chains(optimize_package(src, out), rule="finite_mask")
    assert (chain.status, chain.reason) == (
        "left alone", "InfiniteConstant: infinite in fp16, read by fill: a fill cut by x - band_part(x) (coremltools' "
        "triu/tril of a tensor whose shape is known only at run time), which is -inf - -inf = NaN wherever the band "
        "keeps a position, in every precision: a mask built as triu(full(-inf), 1) makes every output NaN (mlopt audit shows "
        "where); build it with a finite fill such as -1e4, or pass it as an input")
    assert tree_digest(out) == tree_digest(src)
    (result,) = run_package(src, {"x": np.zeros((2, 8), np.float16)}).values()
    assert np.isnan(result).all()
