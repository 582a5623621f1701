"""finite_mask: mask sentinels fp16 cannot hold, replaced by a finite fill before the softmax (fixtures from
fixtures/make_fp16_fixtures.py, which cites the model code each mask copies)."""

import json
import os
import sys

import numpy as np
import pytest

from conftest import FIXTURES, chains, fixture_path, inputs_for, op_types, run_package, tree_digest
from mlopt import optimize_package
from mlopt.package import read_package
from mlopt.rules import finite_mask
from mlopt.rules.finite_mask import FILL, FiniteMaskRule

sys.path.insert(0, FIXTURES)
import make_fp16_fixtures as made  # noqa: E402  (the masks the fixtures were built from)

EXPECTED = json.load(open(os.path.join(FIXTURES, "fp16", "expected.json")))
REWRITTEN = sorted(n for n, e in EXPECTED.items() if e["masks"])
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
    (chain,) = [c for c in chains(optimize_package(src, out)) if c.rule == "finite_mask"]
    assert chain.status == "left alone"
    assert chain.reason == {
        "ane_neg_1e4_fp16_ios17": "MaskedSoftmax: its mask holds no -inf and nothing below -49152: fp16 keeps it finite",
        "llama_finfo_min_fp32_ios17": "MaskedSoftmax: the softmax runs in fp32, where its mask is the source model's own",
    }[name]
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
