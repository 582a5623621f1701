"""Every RMSNorm spelling found in public conversion code (fixtures/converters/, written by
fixtures/make_converter_fixtures.py; expected.json says what each program is and what a rewriter should do).

- "rewrite" forms (1-6, 9): exactly `norms` chains rewritten by the rms_norm rule into concat / layer_norm /
  slice_by_index, nothing left alone, the exact op sequence that results, the eps the author meant (as the program
  stores it), normalised axes, the self-check error, `verify` agreeing, a second run finding nothing to do; the
  max|x| pre-scaled forms say how their eps was inflated, and their rewrite matches a float64 RMSNorm with the true
  eps where the original does not (small inputs) and gives 0, not NaN, on an all-zero row.
- "l2_form" (7) and "already_trick" (8): recognised, left alone with the reason, written back byte for byte.
"""

import json
import math
import os
import re

import numpy as np
import pytest

from conftest import FIXTURES, assert_epsilon, file_digest, fixture_path, main_view, op_types, run_package
from mlopt import optimize_package
from mlopt.cli import main
from mlopt.analyses.verify import verify_packages

CONVERTERS = os.path.join(FIXTURES, "converters")
with open(os.path.join(CONVERTERS, "expected.json")) as f:
    EXPECTED = json.load(f)
MODEL = os.path.join("Data", "com.apple.CoreML", "model.mlmodel")
REWRITE = sorted(n for n, e in EXPECTED.items() if e["expect"] == "rewrite")
L2 = sorted(n for n, e in EXPECTED.items() if e["expect"] == "l2_form")
TRICK = sorted(n for n, e in EXPECTED.items() if e["expect"] == "already_trick")

L2_PREFIX = "RMSNorm (L2 form): already stable on the Neural Engine"
TRICK_REASON = "RMSNorm (LayerNorm trick): already rewritten: layer_norm(concat([x, -x])) read back as its first half"
THE_TRICK = ["mul", "concat", "layer_norm", "slice_by_index", "mul"]  # -x, concat, layer_norm, first half, * gamma
CHAIN_OPS = {"reduce_sum", "reduce_sum_square", "reduce_mean", "reduce_max", "reduce_l2_norm", "rsqrt", "sqrt", "abs",
             "maximum", "square", "pow", "real_div", "expand_dims", "reshape", "tile"}

# What stays around the trick, per family. The StableHLO lowerings compute gamma as tile(reshape(w)) /
# tile(expand_dims(w)): those two ops are gamma's own (the chain's gamma operand is the tile), so they stay and
# feed the final mul; the chain's reshape/expand_dims + tile of the statistic go. Compressed gammas keep their
# constexpr op (the weight stays compressed; see constexpr()). Everything else is the trick alone.
GAMMA_OPS = {
    "stablehlo_reshape": ["reshape", "tile"],
    "stablehlo_real_div": ["reshape", "tile"],
    "stablehlo_expand_dims": ["expand_dims", "tile"],
}
# the chain as mlopt walks it (gamma's own ops are not part of it)
FORM = {
    "stablehlo_reshape": "mul -> reduce_sum -> mul -> reshape -> add -> rsqrt -> tile -> mul -> mul(gamma)",
    "stablehlo_expand_dims": "mul -> reduce_sum -> mul -> expand_dims -> add -> rsqrt -> tile -> mul -> mul(gamma)",
    "stablehlo_real_div": "mul -> reduce_sum -> reshape -> real_div -> add -> rsqrt -> tile -> mul -> mul(gamma)",
    "gemma_sum_reshape": "mul -> reduce_sum -> reshape -> mul -> add -> rsqrt -> mul -> mul(gamma)",
    "gemma_sum_eps_folded": "mul -> reduce_sum -> add -> mul -> rsqrt -> mul -> mul(gamma)",
    "maxabs_floor_channels_first": "abs -> reduce_max -> maximum -> real_div -> square -> reduce_mean -> add -> sqrt "
    "-> mul -> real_div -> mul(gamma)",
    "coremltools_pr2822": "abs -> reduce_max -> maximum -> real_div -> square -> reduce_mean -> mul -> real_div -> add "
    "-> sqrt -> mul -> real_div -> mul(gamma)",
    "executorch_llama_maxabs": "abs -> reduce_max -> real_div -> mul -> reduce_mean -> add -> rsqrt -> mul "
    "-> mul(gamma)",
    "reduce_sum_square_mul": "reduce_sum_square -> mul -> add -> rsqrt -> mul -> mul(gamma)",
    "reduce_sum_square_real_div": "reduce_sum_square -> real_div -> add -> rsqrt -> mul -> mul(gamma)",
    "compressed_palettize": "pow -> reduce_mean -> add -> rsqrt -> mul -> mul(gamma)",
    "compressed_linear_quantize": "pow -> reduce_mean -> add -> rsqrt -> mul -> mul(gamma)",
    "compressed_prune": "pow -> reduce_mean -> add -> rsqrt -> mul -> mul(gamma)",
    "aneforge_l2": "reduce_l2_norm -> maximum -> real_div",
    "executorch_rmsnorm_coreml": "reduce_l2_norm -> maximum -> inverse -> mul",
    "openelm_stable_l2": "reduce_l2_norm -> clip -> real_div",
    "anemll_concat_layer_norm": "mul -> concat -> layer_norm -> slice_by_index",
    "coreml_llm_concat_layer_norm_split": "mul -> concat -> layer_norm -> split",
}
# The max|x| pre-scaled forms compute x / sqrt(mean(x^2) + eps * m^2); the rewrite uses the true eps and says so.
# coremltools' own torch.nn.RMSNorm lowering (fixtures/real/torch_rmsnorm_*) has a note of its own.
# With the floor at 1e-6 an all-zero row still gives 0/0 in fp16: sqrt(eps) * 1e-6 underflows to 0.
MAXABS_NOTE = "max|x| pre-scaled chain: it computed x / sqrt(mean(x^2) + eps * max(max|x|, {floor:g})^2) and gave " \
              "NaN on an all-zero row; rewritten with the true eps"
EXECUTORCH_NOTE = ("max|x| pre-scaled chain without a rescale by max|x| (as executorch's Core ML llama norm): it "
                   "computed x / sqrt(mean(x^2) + eps * max|x|^2) and gave NaN on an all-zero row; rewritten with "
                   "the true eps")
COREMLTOOLS_NOTE = ("coremltools' max-scaled torch.nn.RMSNorm lowering: it computed x / sqrt(mean(x^2) + eps * "
                    "max|x|^2) and gave NaN on an all-zero row; rewritten with the true eps")


def path(name):
    return fixture_path(name, "converters")


def family(name):
    return re.sub(r"_(fp16|fp32)_ios\d+$", "", name)


def only_chain(report):
    (function,) = report.functions
    (chain,) = function.chains
    return chain


def constexpr(name):
    """The op a compressed gamma arrives through, as expected.json's description names it (int8 dequantization
    is constexpr_affine_dequantize up to iOS17, constexpr_blockwise_shift_scale on iOS18)."""
    return EXPECTED[name]["description"].rsplit("gamma arrives through ", 1)[1]


def expected_ops(name):
    """The rewritten program's ops (constants left out): gamma's own ops, the trick, and on fp16 iOS15 (no fp16
    model I/O) coremltools' casts after the input and before the output, which are no part of the chain."""
    e = EXPECTED[name]
    gamma = [constexpr(name)] if name.startswith("compressed_") else GAMMA_OPS.get(family(name), [])
    ops = gamma + THE_TRICK
    return ["cast", *ops, "cast"] if (e["dtype"], e["target"]) == ("fp16", "iOS15") else ops


def normalised_axes(name, x):
    view = main_view(path(name))
    rank = view.rank(x)
    return [a % rank for a in EXPECTED[name]["axes"]]


# -- the fixture set -------------------------------------------------------------------------------------------
def test_fixture_set_is_complete():
    on_disk = sorted(f[: -len(".mlpackage")] for f in os.listdir(CONVERTERS) if f.endswith(".mlpackage"))
    assert on_disk == sorted(EXPECTED)
    assert {e["form"] for e in EXPECTED.values()} == set(range(1, 10))
    assert {e["expect"] for e in EXPECTED.values()} == {"rewrite", "l2_form", "already_trick"}
    assert all(e["norms"] == 1 for e in EXPECTED.values())
    assert set(map(family, EXPECTED)) == set(FORM)


# -- forms mlopt rewrites --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", REWRITE)
def test_rewritten(name, tmp_path):
    e = EXPECTED[name]
    out = tmp_path / "o.mlpackage"
    report = optimize_package(path(name), out)
    assert report.written and out.is_dir()
    chains = [c for f in report.functions for c in f.chains]
    assert sum(c.status == "rewritten" and c.rule == "rms_norm" for c in chains) == e["norms"]
    assert report.rewrites == e["norms"] and report.left_alone == 0, report.render()
    chain = only_chain(report)
    assert (chain.rule, chain.kind, chain.dtype) == ("rms_norm", "RMSNorm", e["dtype"])
    assert chain.form == FORM[family(name)]
    assert chain.replacement == THE_TRICK

    ops = op_types(str(out))
    assert ops == expected_ops(name)
    assert (ops.count("concat"), ops.count("layer_norm"), ops.count("slice_by_index")) == (e["norms"],) * 3
    if family(name) in ("stablehlo_reshape", "stablehlo_real_div", "stablehlo_expand_dims"):
        gone = CHAIN_OPS - {"reshape", "expand_dims", "tile"}  # gamma's reshape/expand_dims + tile stay
        assert ops.count("tile") == 1  # the statistic's tile is gone, gamma's is left
    else:
        gone = CHAIN_OPS
    assert not gone & set(ops), gone & set(ops)

    assert_epsilon(chain.epsilon, e["epsilon"], e["dtype"])
    assert chain.axes == normalised_axes(name, chain.x)
    assert math.isfinite(chain.error) and chain.error < (2e-3 if e["dtype"] == "fp16" else 1e-5)

    result = verify_packages(path(name), out)
    assert result.passed, result.render()
    again = optimize_package(out, tmp_path / "again.mlpackage")
    assert again.rewrites == 0
    assert (only_chain(again).status, only_chain(again).reason) == ("left alone", TRICK_REASON)


@pytest.mark.parametrize("name", REWRITE)
def test_note_says_when_the_eps_was_inflated(name):
    """Forms 4 (floored max|x|) and 5 (executorch) computed eps * max|x|^2 and are rewritten with the true eps,
    each with a note of its own; coremltools PR 2822 rescales eps by 1/m^2 (exact), so no note, nor for any
    other form."""
    chain = only_chain(optimize_package(path(name), dry_run=True))
    fam = family(name)
    if fam == "maxabs_floor_channels_first":
        assert chain.note == MAXABS_NOTE.format(floor=float(np.float16(1e-6)))
    elif fam == "executorch_llama_maxabs":
        assert chain.note == EXECUTORCH_NOTE
    else:
        assert chain.note is None


def test_inflated_eps_notes_differ_from_the_coremltools_lowering():
    notes = [only_chain(optimize_package(p, dry_run=True)).note for p in (
        os.path.join(FIXTURES, "real", "torch_rmsnorm_fp32_ios17.mlpackage"),
        path("maxabs_floor_channels_first_fp16_ios17"),
        path("executorch_llama_maxabs_fp32_ios17"),
    )]
    assert notes[0] == COREMLTOOLS_NOTE
    assert len(set(notes)) == 3
    assert all(n.endswith("rewritten with the true eps") for n in notes)


COMPRESSED = sorted(n for n in REWRITE if n.startswith("compressed_"))


@pytest.mark.parametrize("name", COMPRESSED)
def test_compressed_gamma_is_read_through_its_constexpr(name):
    """Form 9: gamma reaches the chain's last mul through the constexpr op the description names; the chain's gamma
    is that op's output, and the self-check could read it (an error was measured, not skipped)."""
    op_type = constexpr(name)
    assert op_type == {"palettize": "constexpr_lut_to_dense", "prune": "constexpr_sparse_to_dense",
                       "linear_quantize": "constexpr_blockwise_shift_scale" if EXPECTED[name]["target"] == "iOS18"
                       else "constexpr_affine_dequantize"}[family(name)[len("compressed_"):]]
    view = main_view(path(name))
    producer = {out.name: op.type for op in view.main.operations for out in op.outputs}
    last_mul = [op for op in view.main.operations if op.type == "mul"][-1]
    sources = [arg.name for key in ("x", "y") for arg in last_mul.inputs[key].arguments]
    assert op_type in [producer.get(s) for s in sources]
    chain = only_chain(optimize_package(path(name), dry_run=True))
    assert chain.status == "would rewrite"
    assert chain.gamma in sources and producer[chain.gamma] == op_type
    assert isinstance(chain.error, float) and 0 < chain.error < 2e-3


# -- numbers: float64 RMSNorm with the true eps ----------------------------------------------------------------
FP32_REWRITE = sorted(n for n in REWRITE if EXPECTED[n]["dtype"] == "fp32")


def io(name):
    view = main_view(path(name))
    (inp,) = view.function.inputs
    shape = [d.constant.size for d in inp.type.tensorType.dimensions]
    return inp.name, shape


def rms_norm64(x, gamma, eps, axis):
    x = np.asarray(x, np.float64)
    return x / np.sqrt(np.mean(x * x, axis=axis, keepdims=True) + eps) * gamma


@pytest.mark.parametrize("name", FP32_REWRITE)
def test_rewrite_is_rmsnorm_with_the_true_eps(name, tmp_path):
    """gamma is read off the original at x = 1 (every form is exact there: max|x| = 1, mean(x^2) = 1); then the
    rewrite equals x / sqrt(mean(x^2) + eps) * gamma with expected.json's eps, at magnitude 1 and at 1e-3 (where
    mean(x^2) ~ eps and the eps matters). The original agrees at magnitude 1; executorch's form, whose eps was
    eps * max|x|^2, is far off at 1e-3, the rewrite is not."""
    e = EXPECTED[name]
    out = tmp_path / "o.mlpackage"
    optimize_package(path(name), out)
    inp, shape = io(name)
    axis = e["axes"][0] % len(shape)
    (value,) = run_package(path(name), {inp: np.ones(shape, np.float32)}).values()
    gamma = value.astype(np.float64) * np.sqrt(1.0 + e["epsilon"])
    rng = np.random.default_rng(0)
    for scale in (1.0, 1e-3):
        x = (rng.standard_normal(shape) * scale).astype(np.float32)
        (after,) = run_package(str(out), {inp: x}).values()
        (before,) = run_package(path(name), {inp: x}).values()
        want = rms_norm64(x, gamma, e["epsilon"], axis)
        np.testing.assert_allclose(after, want, rtol=1e-5, atol=1e-6)
        if scale == 1.0 or family(name) != "executorch_llama_maxabs":
            np.testing.assert_allclose(before, want, rtol=1e-4, atol=1e-6)
        else:
            assert np.max(np.abs(before - want) / np.abs(want)) > 1.0  # eps * max|x|^2 ~ 1e-11 instead of 1e-5


@pytest.mark.parametrize("name,original_nan", [
    ("executorch_llama_maxabs_fp32_ios17", True),  # 0 / max|0| = NaN
    ("executorch_llama_maxabs_fp16_ios17", True),
    ("maxabs_floor_channels_first_fp16_ios17", True),  # the floor: sqrt(eps) * 1e-6 ~ 3e-9 underflows fp16 to 0
    ("coremltools_pr2822_fp32_ios17", False),  # maximum(max|x|, 1): no 0/0
    ("coremltools_pr2822_fp16_ios17", False),
])
def test_all_zero_row(name, original_nan, tmp_path):
    out = tmp_path / "o.mlpackage"
    optimize_package(path(name), out)
    inp, shape = io(name)
    dtype = np.float16 if EXPECTED[name]["dtype"] == "fp16" and EXPECTED[name]["target"] != "iOS15" else np.float32
    axis = EXPECTED[name]["axes"][0] % len(shape)
    x = np.random.default_rng(1).standard_normal(shape).astype(dtype)
    zero = tuple(slice(None) if i == axis else 0 for i in range(len(shape)))
    x[zero] = 0
    (before,) = run_package(path(name), {inp: x}).values()
    (after,) = run_package(str(out), {inp: x}).values()
    if original_nan:
        assert np.isnan(before[zero]).all()
    else:
        assert np.all(before[zero] == 0)
    assert np.all(after[zero] == 0)
    assert np.isfinite(after).all()
    rest = np.ones(shape, bool)
    rest[zero] = False
    np.testing.assert_allclose(after[rest], before[rest], rtol=1e-2 if dtype == np.float16 else 1e-4, atol=2e-3)


# -- forms mlopt leaves alone ----------------------------------------------------------------------------------
def l2_reason(name):
    """The L2 forms floor the norm instead of adding eps under the root; the reason names the floor as stored:
    ANEForge's fp16(sqrt(D * eps)) (rounded to fp16 by ANEForge itself), executorch's sqrt(D * eps) and OpenELM's
    eps, each in the program's dtype."""
    e = EXPECTED[name]
    floor = {"aneforge_l2": float(np.float16(math.sqrt(64 * 1e-5))),
             "executorch_rmsnorm_coreml": math.sqrt(64 * e["epsilon"]),
             "openelm_stable_l2": e["epsilon"]}[family(name)]
    floor = float((np.float16 if e["dtype"] == "fp16" else np.float32)(floor))
    return (f"{L2_PREFIX} (one fused reduce_l2_norm, no fp16 x^2); eps enters as a floor on the norm, "
            f"max(||v||, {floor:g}) over N = 64 values, not added under the root")


@pytest.mark.parametrize("name", L2 + TRICK)
def test_left_alone(name, tmp_path, capsys):
    reason = l2_reason(name) if name in L2 else TRICK_REASON
    report = optimize_package(path(name), dry_run=True)
    norms = [c for f in report.functions for c in f.chains if c.rule == "rms_norm"]  # finite_bounds makes a
    assert [c.status for c in norms] == ["left alone"]  # clamp_min's +inf bound of an fp16 program +65504
    (chain,) = norms
    assert (chain.rule, chain.status, chain.form) == ("rms_norm", "left alone", FORM[family(name)])
    assert chain.reason == reason and chain.reason.startswith(L2_PREFIX if name in L2 else "RMSNorm (LayerNorm trick)")
    assert chain.replacement is None and chain.error is None

    assert main(["inspect", path(name)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(re.fullmatch(rf"  \[\d\] left alone: {re.escape(FORM[family(name)])}", line) for line in lines)
    assert f"      reason: {reason}" in lines

    out = tmp_path / "o.mlpackage"
    report = optimize_package(path(name), out, only=["rms_norm"])  # the rms_norm rule alone leaves the model as it is
    assert report.rewrites == 0 and [c.reason for f in report.functions for c in f.chains if c.rule == "rms_norm"] == [reason]
    assert file_digest(out / MODEL) == file_digest(os.path.join(path(name), MODEL))
