"""finite_mask on a mask every layer shares (fixtures/fp16/*_L2_*, *_L4_*, from fixtures/make_fp16_fixtures.py:
BERT's extended mask, Llama's causal mask, AttentionMaskConverter's select): rewritten once where it is shared,
every softmax still reading the one rewritten value, judged at each of them."""

import json
import os
import sys
from dataclasses import replace

import numpy as np
import pytest

from conftest import FIXTURES, chains, fixture_path, inputs_for, main_view, op_types, run_package, tree_digest
from mlopt import optimize_package
from mlopt.analyses.audit import audit_package
from mlopt.package import read_package
from mlopt.rules.finite_mask import FILL, FiniteMaskRule

sys.path.insert(0, FIXTURES)
import make_fp16_fixtures as made  # noqa: E402  (the masks the fixtures were built from)

EXPECTED = json.load(open(os.path.join(FIXTURES, "fp16", "expected.json")))
SHARED = sorted(n for n, e in EXPECTED.items() if "layers" in e)
F32_MIN = float(np.finfo(np.float32).min)


def family(name):
    return name.split("_L")[0]


def reference_mask(name, feeds):
    """The float32 source's mask (float32's minimum where masked): the fixture's constant, or AttentionMaskConverter's
    `causal.masked_fill(padding.bool(), min)` of the attention_mask fed."""
    mask = made.SHARED[family(name)][0]
    if mask is not None:
        return np.where(np.asarray(mask, np.float64) < FILL, F32_MIN, mask)
    padded = np.asarray(feeds["attention_mask"], np.float64).reshape(1, 1, 1, made.SEQ) != 1
    return np.where(padded | made.CAUSAL, F32_MIN, 0.0)


def layered_reference(name, feeds):
    """The source model in float64: every layer attends with the one mask, reading the previous layer's output as q."""
    from test_finite_mask import source_attention

    mask, q = reference_mask(name, feeds), feeds["q"]
    for _ in range(EXPECTED[name]["layers"]):
        q = source_attention({**feeds, "q": q}, mask)
    return q


def masks_read(view):
    """The value each add into a softmax reads as its mask, walked up through casts (a layer's own, or one every
    layer reads): {value}. One value for a mask rewritten where it is shared."""
    found = set()
    for op in view.ops():
        if view.op_type(op) != "add":
            continue
        value = next(v for v in (view.arg(op, "x"), view.arg(op, "y")) if view.is_constant_expr(v) or
                     view.op_type(view.producer(v)) in ("select", "cast", "const"))
        while view.op_type(view.producer(value)) == "cast":
            value = view.arg(view.producer(value), "x")
        found.add(value)
    return found


def holding_fill(view):
    """The float constants of the function holding the fill somewhere."""
    values = [v for v in view.types if view.is_const(v)]
    return [v for v in values if np.asarray(view.const_value(v)).dtype.kind == "f" and (np.asarray(view.const_value(v)) == FILL).any()]


@pytest.mark.parametrize("name", SHARED)
def test_a_shared_mask_is_rewritten_once_and_every_softmax_reads_it(name, tmp_path):
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load

    src, out, again = fixture_path(name, "fp16"), str(tmp_path / "out.mlpackage"), str(tmp_path / "again.mlpackage")
    layers = EXPECTED[name]["layers"]
    (chain,) = chains(optimize_package(src, out), rule="finite_mask")
    assert chain.status == "rewritten", chain.reason
    assert chain.note.startswith(f"one mask shared by {layers} softmaxes, rewritten once at ")
    # the ops: as before; a cast of the mask that every layer read is gone (its value is now an fp16 constant)
    expected = op_types(src)
    if "shared_cast" in name and "converter" not in name:
        expected.remove("cast")
    assert op_types(out) == expected
    assert op_types(src).count("softmax") == layers
    view = main_view(out)
    (mask,) = masks_read(view)  # every softmax's add reads the one rewritten value
    producer = view.producer(mask)
    if made.SHARED[family(name)][0] is not None:  # a constant: the one constant holding the fill
        assert view.op_type(producer) == "const" and holding_fill(view) == [mask]
        held = np.asarray(view.const_value(mask), np.float64)
        source = np.asarray(made.SHARED[family(name)][0], np.float64)
        np.testing.assert_array_equal(held, np.where(source < FILL, FILL, source).reshape(held.shape))
    else:  # a computed mask: the one select, both its constant branches finite
        assert view.op_type(producer if view.op_type(producer) != "cast" else view.producer(view.arg(producer, "x"))) == "select"
        assert len(holding_fill(view)) == 2
    assert len([op for op in view.ops() if view.op_type(op) == "const"]) <= len(
        [op for op in main_view(src).ops() if main_view(src).op_type(op) == "const"])
    # the outputs: the float64 source within tolerance
    feeds = inputs_for(src)
    (output,) = (after := run_package(out, feeds))
    assert np.isfinite(after[output]).all()
    np.testing.assert_allclose(after[output].astype(np.float64), layered_reference(name, feeds), rtol=2e-2, atol=2e-2)
    # coremltools' own loader reads it; the same input gives the same bytes
    package = read_package(out)
    package.close()
    program = milproto_load(package.spec, package.spec.specificationVersion, os.path.join(out, "Data", "com.apple.CoreML", "weights"))
    assert [op.op_type for op in program.functions["main"].operations if op.op_type != "const"] == expected
    optimize_package(src, again)
    assert tree_digest(again) == tree_digest(out)
    # the audit: the hazard before, nothing after
    assert not audit_package(src).passed
    after_audit = audit_package(out)
    assert after_audit.passed, [f"{f.kind} {f.op}: {f.detail}" for f in after_audit.findings]


@pytest.mark.parametrize("name", ["llama_causal_shared_L4_fp16_ios17", "bert_extended_shared_L2_fp16_ios17",
                                  "llama_causal_per_layer_cast_L4_mixed_ios17", "converter_select_shared_L4_fp16_ios17",
                                  "converter_select_shared_cast_L2_mixed_ios17"])
def test_the_proof_at_every_softmax_rejects_a_wrong_fill(name, monkeypatch, tmp_path):
    """The shared value made with 0 instead of the fill: masked keys get attended to in every layer; the proof,
    judged at each softmax with its own scores, rolls it back and the package is copied byte for byte."""
    original = FiniteMaskRule.lower
    monkeypatch.setattr(FiniteMaskRule, "lower", lambda self, b, m: original(self, b, replace(m, params={**m.params, "fill": 0.0})))
    src, out = fixture_path(name, "fp16"), str(tmp_path / "out.mlpackage")
    (chain,) = chains(optimize_package(src, out, rules=(FiniteMaskRule(),)))
    assert chain.status == "left alone"
    assert chain.reason.startswith("proof failed: the rewrite differs from the MaskedSoftmax chain at '"), chain.reason
    assert tree_digest(out) == tree_digest(src)


def test_each_softmax_is_judged_with_its_own_scores(monkeypatch, tmp_path):
    """Match.readings: the proof reads, at every softmax, that layer's own scores. Readings that all name the first
    layer's scores do not describe the second softmax, and the proof says so instead of judging against them."""
    original = FiniteMaskRule._shared

    def first_scores_everywhere(self, graph, op, *args, **kwargs):
        status = original(self, graph, op, *args, **kwargs)
        match = getattr(status, "match", None)
        if match is not None:
            first = match.readings[match.judged()[0]]
            match.readings = {k: replace(r, x=first.x) for k, r in match.readings.items()}
        return status

    monkeypatch.setattr(FiniteMaskRule, "_shared", first_scores_everywhere)
    src = fixture_path("llama_causal_shared_L2_fp16_ios17", "fp16")
    (chain,) = chains(optimize_package(src, dry_run=True, rules=(FiniteMaskRule(),)))
    assert chain.status == "left alone"
    assert chain.reason.startswith("mlopt misread this chain"), chain.reason


def test_rows_the_input_masks_entirely_are_nan_before_and_uniform_after(tmp_path):
    """AttentionMaskConverter's mask with left padding: query rows 0 and 1 see only padded keys. The fp16 original
    gives NaN there (and every later layer reads it); the rewrite gives the float32 source's uniform rows."""
    name = "converter_select_shared_L4_fp16_ios17"
    src, out = fixture_path(name, "fp16"), str(tmp_path / "out.mlpackage")
    (chain,) = chains(optimize_package(src, out), rule="finite_mask")
    assert chain.status == "rewritten"
    assert "a row that the condition masks entirely is uniform after the rewrite" in chain.note
    feeds = inputs_for(src)
    feeds["attention_mask"] = np.array([0, 0, 1, 1, 1, 1], feeds["attention_mask"].dtype).reshape(1, 1, 1, made.SEQ)
    before, after = run_package(src, feeds), run_package(out, feeds)
    (output,) = after
    assert np.isnan(before[output]).any()
    assert np.isfinite(after[output]).all()
    np.testing.assert_allclose(after[output].astype(np.float64), layered_reference(name, feeds), rtol=2e-2, atol=2e-2)


def test_a_mask_also_read_by_something_else_is_rewritten_per_layer(tmp_path):
    """A mask that is also a model output keeps its value: each layer's chain gets its own finite copy (the
    shared value cannot change), and the output is the original mask."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    f = np.float16
    mask = np.where(made.CAUSAL, f(-np.inf), f(0)).reshape(1, 1, made.SEQ, made.SEQ)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, made.HEADS, made.SEQ, made.DIM), dtype=types.fp16)],
                opset_version=ct.target.iOS17)
    def prog(q):
        held = mb.const(val=mask)
        m = mb.add(x=held, y=f(0))  # the mask's constant read by something besides the layers' adds
        for _ in range(2):
            q = mb.matmul(x=mb.softmax(x=mb.add(x=mb.matmul(x=q, y=q, transpose_y=True), y=held), axis=-1), y=q)
        return q, m

    src, out = str(tmp_path / "in.mlpackage"), str(tmp_path / "out.mlpackage")
    ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
               pass_pipeline=ct.PassPipeline.EMPTY, skip_model_load=True).save(src)
    found = chains(optimize_package(src, out), rule="finite_mask")
    assert [c.status for c in found] == ["rewritten", "rewritten"]
    assert not any(c.note.startswith("one mask shared") for c in found)


def test_at_conversion_time_a_shared_mask_is_left_alone_with_a_warning(tmp_path):
    """One fused op replaces one value and is judged at one: the shared mask's match is left to `mlopt optimize`
    (with a warning that says so), and the conversion still succeeds."""
    import warnings

    import coremltools as ct

    from mlopt.coreml import convert

    prog = made.layered_attention(made.causal(-np.inf), 2, cast="shared")  # fp16-typed: the fusion sees fp16 softmaxes
    kwargs = dict(convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17, skip_model_load=True,
                  compute_precision=ct.precision.FLOAT16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = convert(prog, compute_units=ct.ComputeUnit.CPU_ONLY, rules=(FiniteMaskRule(),), **kwargs)
    assert any("judged at 2 values" in str(w.message) and "run mlopt optimize on the saved model" in str(w.message)
               for w in caught), [str(w.message) for w in caught]
    path = str(tmp_path / "converted.mlpackage")
    model.save(path)
    (chain,) = chains(optimize_package(path, str(tmp_path / "out.mlpackage")), rule="finite_mask")
    assert chain.status == "rewritten" and chain.note.startswith("one mask shared by 2 softmaxes")


def test_a_fill_constant_shared_by_every_layers_masked_fill_is_rewritten_once(tmp_path):
    """nanoGPT's `att.masked_fill(self.bias[:, :, :T, :T] == 0, float('-inf'))` in every layer, converted with one
    -inf constant that every layer's select reads: that constant becomes the fill, once; each layer keeps its
    select, and each softmax is judged with its own condition and scores."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    f = np.float16

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, made.HEADS, made.SEQ, made.DIM), dtype=types.fp16)],
                opset_version=ct.target.iOS17)
    def prog(q):
        fill = mb.const(val=f(-np.inf))
        for window in (made.SEQ, 2):  # layer 2 also masks keys more than one position back (a sliding window)
            keep = np.tri(made.SEQ, k=0, dtype=bool) & ~np.tri(made.SEQ, k=-window, dtype=bool)
            scores = mb.matmul(x=q, y=q, transpose_y=True)
            q = mb.matmul(x=mb.softmax(x=mb.select(cond=keep.reshape(1, 1, made.SEQ, made.SEQ), a=scores, b=fill), axis=-1), y=q)
        return q

    src, out = str(tmp_path / "in.mlpackage"), str(tmp_path / "out.mlpackage")
    ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
               pass_pipeline=ct.PassPipeline.EMPTY, skip_model_load=True).save(src)
    (chain,) = chains(optimize_package(src, out), rule="finite_mask")
    assert chain.status == "rewritten", chain.reason
    assert chain.note.startswith("one mask shared by 2 softmaxes")
    assert op_types(out) == op_types(src) == ["matmul", "select", "softmax", "matmul"] * 2
    view = main_view(out)
    fills = {view.arg(op, "b") for op in view.ops() if view.op_type(op) == "select"}
    (fill,) = fills  # both selects read the one rewritten constant
    assert float(view.const_value(fill)) == FILL and holding_fill(view) == [fill]
    feeds = inputs_for(src)
    before, after = run_package(src, feeds), run_package(out, feeds)
    (output,) = after
    np.testing.assert_allclose(after[output].astype(np.float64), before[output].astype(np.float64), rtol=2e-2, atol=2e-2)
