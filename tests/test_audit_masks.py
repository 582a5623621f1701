"""What `audit` (and `verify`, which draws the same inputs) feed an attention-mask input, and how the audit judges a
softmax row a mask hides entirely (docs/audit.md, "Attention masks")."""

import json

import numpy as np
import pytest

from conftest import fixture_path, inputs_for, main_view, run, run_package
from mlopt import optimize_package
from mlopt.analyses.audit import audit_package
from mlopt.analyses.verify import verify_packages
from mlopt.numerics.inputs import mask_draw
from mlopt.patterns.attention_mask import keep_drop_inputs

import coremltools as ct  # noqa: E402
from coremltools.converters.mil import Builder as mb  # noqa: E402
from coremltools.converters.mil.mil import types  # noqa: E402

HF_INPUT_MASK = "hf_input_mask_min_fp16_ios17"
FULL_ROW = "padded_query_full_row_fp16_ios17"
HF_NOTE = ("function 'main' input 'attention_mask': a keep/drop attention mask (cast -> sub -> mul -> expand_dims -> "
           "add -> softmax): drawn from {0, 1}, every row (last axis) holding both (--scale does not apply)")


def saved(tmp_path, body, specs, name="in"):
    """An fp16-typed program saved without coremltools' passes (the ops stay as written)."""
    prog = mb.program(input_specs=specs, opset_version=ct.target.iOS17)(body)
    path = str(tmp_path / f"{name}.mlpackage")
    ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
               pass_pipeline=ct.PassPipeline.EMPTY, skip_model_load=True).save(path)
    return path


def scores_of(x):
    return mb.matmul(x=x, y=x, transpose_y=True)


SPEC_X = mb.TensorSpec(shape=(1, 4, 8), dtype=types.fp16)


def test_the_inputs_a_program_uses_as_keep_drop_masks(tmp_path):
    view = main_view(fixture_path(HF_INPUT_MASK, "fp16"))
    assert keep_drop_inputs(view, ["q", "k", "v", "attention_mask"]) == {
        "attention_mask": "cast -> sub -> mul -> expand_dims -> add -> softmax"}
    # AttentionMaskConverter's chain: (1 - m) cast to bool, two selects of the fill, added to the scores
    view = main_view(fixture_path("mask_f32min_fp16_ios17", "audit"))
    assert list(keep_drop_inputs(view, ["input_ids", "attention_mask"])) == ["attention_mask"]


def test_a_select_condition_input_is_a_mask_and_an_added_bias_is_not(tmp_path):
    specs = [SPEC_X, mb.TensorSpec(shape=(1, 4, 4), dtype=types.bool), mb.TensorSpec(shape=(1, 4, 4), dtype=types.fp16)]

    def body(x, keep, bias):
        first = mb.softmax(x=mb.select(cond=keep, a=scores_of(x), b=np.float16(-30000)), axis=-1)
        return mb.softmax(x=mb.add(x=scores_of(mb.matmul(x=first, y=x)), y=bias), axis=-1)  # a bias added as it is

    view = main_view(saved(tmp_path, body, specs))
    assert keep_drop_inputs(view, ["x", "keep", "bias"]) == {"keep": "cast -> select -> softmax"}  # the converter casts the bool input


def test_a_mask_read_by_something_other_than_a_softmax_is_no_attention_mask(tmp_path):
    specs = [SPEC_X, mb.TensorSpec(shape=(1, 4, 4), dtype=types.fp16)]

    def body(x, m):
        return mb.add(x=scores_of(x), y=mb.mul(x=mb.sub(x=np.float16(1), y=m), y=np.float16(-30000)))  # no softmax

    assert keep_drop_inputs(main_view(saved(tmp_path, body, specs)), ["x", "m"]) == {}


@pytest.mark.parametrize("shape", [(1, 6), (3, 2, 5), (4, 2), (2, 1)])
def test_a_drawn_mask_keeps_and_drops_in_every_row(shape):
    values = mask_draw(np.random.default_rng(0), shape)
    assert values.shape == shape and set(np.unique(values)) <= {0, 1}
    rows = values.reshape(-1, shape[-1])
    if shape[-1] == 1:
        assert (rows == 1).all()
    else:
        assert (rows.max(axis=1) == 1).all() and (rows.min(axis=1) == 0).all()


def test_audit_feeds_the_mask_input_zeros_and_ones_and_says_so(tmp_path):
    src, out = fixture_path(HF_INPUT_MASK, "fp16"), str(tmp_path / "out.mlpackage")
    before = audit_package(src)
    assert before.notes[0] == HF_NOTE
    assert before.notes[1] == "function 'main' inputs 'q' [1, 2, 6, 8], 'k' [1, 2, 6, 8], 'v' [1, 2, 6, 8]: floats drawn from N(0, 1^2), seed 0"
    assert [f.kind for f in before.findings] == ["static"]  # the -inf sentinel; with 0/1 it overflows nothing
    optimize_package(src, out)
    after = audit_package(out)
    assert after.passed, after.findings  # random normals in the mask made (1 - m) * -49152 overflow: no more
    mask = inputs_for(src)["attention_mask"]
    assert set(np.unique(mask)) == {0.0, 1.0}
    # verify draws the same inputs and says the same
    report = verify_packages(src, out)
    assert HF_NOTE in report.notes


def test_an_inputs_file_wins_over_the_mask_draw(tmp_path):
    src = fixture_path(HF_INPUT_MASK, "fp16")
    feeds = inputs_for(src)
    feeds["attention_mask"] = np.full((1, 6), 0.5, np.float32)  # a soft mask: the user's choice
    npz = tmp_path / "in.npz"
    np.savez(npz, attention_mask=feeds["attention_mask"])
    report = audit_package(src, inputs_path=str(npz))
    assert report.notes[0] == f"function 'main' input 'attention_mask': from {npz} (--seed and --scale do not apply)"


def test_a_fully_masked_row_is_judged_against_the_uniform_row(tmp_path):
    src, out = fixture_path(FULL_ROW, "fp16"), str(tmp_path / "out.mlpackage")
    before = audit_package(src)
    assert [(f.kind, f.op) for f in before.findings] == [("static", "add_0_y_0_to_fp16"), ("nonfinite", "softmax_0_cast_fp16")]
    assert before.findings[1].detail == "first op output with NaN/inf where float64 has none: 12 NaN of 72 elements"
    text = before.render()
    assert ("  2 fully masked rows at 'softmax_0_cast_fp16' (every input at or below -16384): fp16 gives NaN in 2 of "
            "them, where the fp32 source model gives a uniform row\n") in text
    optimize_package(src, out)
    after = audit_package(out)
    assert after.passed, after.findings  # no "precision" finding: float64's softmax(s) is not the reference there
    assert ("  2 fully masked rows at 'softmax_0_cast_fp16' (every input at or below -16384): fp16 gives a uniform "
            "row (the fp32 source model's behaviour), and the audit judges it so\n") in after.render()
    (row,) = [r for r in after.rows if r.op == "softmax_0_cast_fp16"]
    assert row.error < 1e-2
    # the device run does give the uniform row there (row 3 of each head)
    result = run_package(out, inputs_for(out))
    probabilities = np.asarray(result["matmul_1"], np.float64)  # the output: p @ v; a uniform p gives v's mean
    np.testing.assert_allclose(probabilities[0, :, 3], inputs_for(out)["v"][0].astype(np.float64).mean(axis=1), atol=1e-2)


def test_a_row_that_is_not_absorbed_is_said_so(tmp_path):
    specs = [mb.TensorSpec(shape=(1, 2, 4), dtype=types.fp16)]
    # row 0: -49152 + x where |x| up to 100 is not absorbed into a uniform row; row 1: a normal row
    mask = np.array([[[-49152] * 4, [0] * 4]], np.float16)
    path = saved(tmp_path, lambda x: mb.softmax(x=mb.add(x=x, y=mask), axis=-1), specs)
    npz = tmp_path / "in.npz"
    np.savez(npz, x=np.array([[[0, 40, -40, 100], [1, 2, 3, 4]]], np.float16))
    report = audit_package(path, inputs_path=str(npz))
    (masked,) = report.masked
    assert (masked.rows, masked.nan, masked.uneven) == (1, 0, 1)
    assert ("  1 fully masked row at 'softmax_0' (every input at or below -16384): fp16 gives a row that is not "
            "uniform in 1 of them, where the fp32 source model gives a uniform row\n") in report.render()


def test_the_json_report_lists_the_fully_masked_rows(capsys, tmp_path):
    from json_schema import errors
    from test_audit import SCHEMA

    code, stdout, _ = run(capsys, "audit", fixture_path(FULL_ROW, "fp16"), "--json")
    assert code == 1
    data = json.loads(stdout)
    assert data["fully_masked_rows"] == [{"function": "main", "op": "softmax_0_cast_fp16", "rows": 2, "nan": 2, "uneven": 0}]
    assert errors(data, SCHEMA) == []


def test_verify_holds_a_row_masked_entirely_to_the_uniform_row_too(tmp_path):
    """verify's float64 yardstick treats a fully masked row as the audit does: the rewrite agrees with it, the NaN
    original departs from it."""
    src, out = fixture_path(FULL_ROW, "fp16"), str(tmp_path / "out.mlpackage")
    optimize_package(src, out)
    report = verify_packages(src, out)
    assert report.passed
    (check,) = report.checks
    assert check.note == (
        "against float64: reference inf, candidate 0.00037; the reference departs from the mathematics: not finite "
        "first at op 'softmax_0_cast_fp16'; beyond tolerance of the reference, which carries no signal here; the "
        "candidate agrees with float64 within tolerance")


def test_verify_says_when_float64_itself_computes_no_number(tmp_path):
    """(1 - m) * -inf stored in fp16: 0 * -inf is NaN in float64 too, so float64 cannot judge the rewrite."""
    src, out = fixture_path(HF_INPUT_MASK, "fp16"), str(tmp_path / "out.mlpackage")
    optimize_package(src, out)
    report = verify_packages(src, out)
    assert not report.passed
    (check,) = report.checks
    assert check.note == (
        "against float64: reference 0, candidate inf; float64 itself is NaN/inf where the candidate is finite (the "
        "reference's program computes no number there, e.g. 0 * a -inf mask sentinel): float64 cannot judge, and the "
        "candidate differs from the reference")
