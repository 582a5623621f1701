"""The layer_norm rule: decomposed LayerNorms from real model code (fixtures/layernorm/, written by
fixtures/make_layernorm_fixtures.py from fixtures/layernorm_zoo.py; expected.json says what each program is,
derived from the model code, never from mlopt) -> one native `layer_norm`.

Every LayerNorm rewritten (exact op sequence, eps, axes, gamma/beta bound into the op where they are plain
constants of the normalised shape, self-check, `verify`, provenance), whatever the compute units; the near-misses
left alone with the reason that is their real cause; --skip / --only; `inspect --json`.
"""

import json
import math
import os

import pytest

from conftest import FIXTURES, assert_epsilon, chains, file_digest, fixture_path, main_view, op_types
from mlopt import optimize_package
from mlopt.cli import main
from mlopt.package import read_package
from mlopt.analyses.verify import verify_packages

LAYERNORM = os.path.join(FIXTURES, "layernorm")
with open(os.path.join(LAYERNORM, "expected.json")) as f:
    EXPECTED = json.load(f)
MODEL = os.path.join("Data", "com.apple.CoreML", "model.mlmodel")
PROVENANCE = "com.github.mlopt.layer_norm_rewrites"

NAMES = sorted(EXPECTED)
REWRITE = [n for n in NAMES if EXPECTED[n]["layer_norms"] > 0]
NEGATIVE = [n for n in NAMES if EXPECTED[n]["negative"]]
RMS = [n for n in NAMES if EXPECTED[n]["rms_norms"] > 0]
NATIVE = [n for n in NAMES if EXPECTED[n]["implementation"] == "ane"]  # fused by coremltools already


def path(name):
    return fixture_path(name, "layernorm")


def impl(name):
    return EXPECTED[name]["implementation"]


# -- what the rewrite leaves ------------------------------------------------------------------------------------
# fp16 and fp32 programs: coremltools' I/O casts (fp16 programs only: after the input, and before the output
# where the model's I/O is fp32), then what is left of the model around its norm. The statistics, the
# centring, the root and the division go; gamma/beta go into the layer_norm where they are constants of the
# normalised shape. What stays after the layer_norm, and why:
CORE = {
    "bert": ["layer_norm"],
    "cohere": ["layer_norm"],
    "restormer_withbias": ["layer_norm"],
    "dtln_instant_layernorm": ["layer_norm"],
    "keras3": ["layer_norm"],  # the mean folded into the offset, beta - mean * inv: one LayerNorm all the same
    "stablehlo_layernorm": ["layer_norm"],  # no affine
    # gamma and beta are full (1, S, D) constants (StableHLO broadcasts them): not of the normalised shape
    "stablehlo_flax_layernorm": ["layer_norm", "mul", "add"],
    # gamma (H, D) varies along the head axis too; the reshape to (B, S, H, D) comes before the norm
    "cohere_qk_norm": ["reshape", "layer_norm", "mul"],
    # the per-channel affine is a batch_norm (coremltools' spelling of w[:, None, None] * x + b)
    "convnext_channels_first": ["layer_norm", "batch_norm"],
    "convnext_channels_first_bc1s": ["layer_norm", "batch_norm"],
    # grouped norms: statistics over (.., groups, C/groups); the per-channel affine applies after the reshape
    # back to (.., C) and stays there
    "rwkv7_ln_x": ["reshape", "layer_norm", "reshape", "mul", "add", "reshape"],
    "xlstm_multihead": ["transpose", "reshape", "layer_norm", "reshape", "mul", "reshape", "transpose"],
}
# Mixed precision (fp32 statistics around fp16 ops): the layer_norm computes in the dtype of the tensor the chain
# centres (the fp32 input, or the fp16 tensor that the chain casts up); a gamma/beta of the other dtype is cast
# to the layer_norm's and applied after it.
MIXED = {
    "bert_mixed_ios15": "layer_norm cast mul add",
    "bert_mixed_ios17": "layer_norm cast mul add cast",
    # fp16 layer_norm; BERT's eps 1e-12 must stay fp32 (0 in fp16), and from iOS17 gamma/beta share its type: both after
    "bert_mixed_sub16_ios17": "cast layer_norm mul cast add",
    "cohere_mixed_ios15": "layer_norm cast mul",
    "cohere_mixed_ios17": "layer_norm cast mul cast",
    "cohere_mixed_sub16_ios17": "cast layer_norm",  # fp16 layer_norm, fp16 gamma bound
    "cohere_qk_norm_mixed_ios15": "cast reshape layer_norm mul cast",
    "cohere_qk_norm_mixed_ios17": "cast reshape layer_norm mul",
    "cohere_qk_norm_mixed_sub16_ios17": "cast reshape layer_norm mul",
    "convnext_channels_first_bc1s_mixed_ios15": "layer_norm cast batch_norm cast",
    "convnext_channels_first_bc1s_mixed_ios17": "layer_norm cast batch_norm",
    "convnext_channels_first_bc1s_mixed_sub16_ios17": "cast layer_norm batch_norm",
    "convnext_channels_first_mixed_ios15": "layer_norm cast batch_norm cast",
    "convnext_channels_first_mixed_ios17": "layer_norm cast batch_norm",
    "convnext_channels_first_mixed_sub16_ios17": "cast layer_norm batch_norm",
    "dtln_instant_layernorm_mixed_ios17": "layer_norm cast mul add",
    "keras3_mixed_ios15": "cast layer_norm cast add cast",
    "keras3_mixed_ios17": "cast layer_norm cast add",
    "keras3_mixed_sub16_ios17": "cast layer_norm cast add",
    "restormer_withbias_mixed_ios15": "layer_norm cast mul add",
    "restormer_withbias_mixed_ios17": "layer_norm cast mul add cast",
    "restormer_withbias_mixed_ios18": "layer_norm cast mul add cast",
    "restormer_withbias_mixed_sub16_ios17": "cast layer_norm cast add",
    "rwkv7_ln_x_mixed_ios15": "cast reshape layer_norm reshape mul cast add cast reshape cast",
    "rwkv7_ln_x_mixed_ios17": "cast reshape layer_norm reshape mul cast add cast reshape",
    "rwkv7_ln_x_mixed_sub16_ios17": "cast reshape layer_norm reshape mul cast add cast reshape",
    "xlstm_multihead_mixed_ios15": "cast transpose reshape layer_norm reshape mul reshape transpose cast",
    "xlstm_multihead_mixed_ios17": "cast transpose reshape layer_norm reshape mul reshape transpose",
    "xlstm_multihead_mixed_sub16_ios17": "cast transpose reshape layer_norm reshape mul reshape transpose",
}
# gamma/beta bound into the layer_norm: plain constants of the normalised shape, in the layer_norm's dtype
BOUND = {"bert": {"gamma", "beta"}, "cohere": {"gamma"}, "restormer_withbias": {"gamma", "beta"},
         "dtln_instant_layernorm": {"gamma", "beta"}, "keras3": {"gamma", "beta"}}
# gamma folds on its own where beta has the other dtype (beta then follows as an add; it cannot fold without gamma)
MIXED_BOUND = {"cohere_mixed_sub16_ios17": {"gamma"},
               "restormer_withbias_mixed_sub16_ios17": {"gamma"}, "keras3_mixed_ios15": {"gamma"},
               "keras3_mixed_ios17": {"gamma"}, "keras3_mixed_sub16_ios17": {"gamma"}}


def expected_ops(name):
    e = EXPECTED[name]
    if e["precision"] not in ("fp16", "fp32"):
        return MIXED[name].split()
    ops = CORE[impl(name)]
    if e["precision"] == "fp16":
        original = op_types(path(name))
        assert original[0] == "cast"  # the input's cast to fp16
        return ["cast", *ops, *(["cast"] if original[-1] == "cast" else [])]
    return list(ops)


def expected_bound(name):
    if EXPECTED[name]["precision"] in ("fp16", "fp32"):
        return BOUND.get(impl(name), set())
    return MIXED_BOUND.get(name, set())


def dead_ops(p):
    """(type, output) of every op whose outputs nothing reads (transitively), function outputs excepted."""
    view = main_view(p)
    ops = [op for op in view.main.operations if op.type != "const"]
    dead = set()
    while True:
        read = {a.name for op in view.main.operations if id(op) not in dead
                for arg in op.inputs.values() for a in arg.arguments}
        new = {id(op) for op in ops if id(op) not in dead
               and not any(o.name in read or o.name in view.main.outputs for o in op.outputs)}
        if not new:
            return [(op.type, op.outputs[0].name) for op in ops if id(op) in dead]
        dead |= new


def the_layer_norm(p):
    view = main_view(p)
    (op,) = [op for op in view.main.operations if op.type == "layer_norm"]
    return view, op


# -- the fixture set -------------------------------------------------------------------------------------------
def test_fixture_set_is_complete():
    on_disk = sorted(f[: -len(".mlpackage")] for f in os.listdir(LAYERNORM) if f.endswith(".mlpackage"))
    assert on_disk == NAMES
    rewriting = {impl(n) for n in REWRITE}
    assert rewriting == set(CORE)
    assert {n for n in REWRITE if EXPECTED[n]["precision"] not in ("fp16", "fp32")} == set(MIXED)
    assert {impl(n) for n in NEGATIVE} == {"annotated_transformer", "cross_axis_centring", "llama_rmsnorm",
                                           "other_tensor_variance", "restormer_biasfree"}
    assert all(EXPECTED[n]["layer_norms"] == 0 for n in NEGATIVE + NATIVE)


# -- rewritten -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", REWRITE)
def test_layer_norm_rewritten(name, tmp_path):
    e = EXPECTED[name]
    out = tmp_path / "o.mlpackage"
    report = optimize_package(path(name), out)
    rewritten = [c for c in chains(report, "layer_norm") if c.status == "rewritten"]
    assert len(rewritten) == e["layer_norms"] == report.rewrites, report.render()
    assert report.left_alone == 0 and not chains(report, "rms_norm"), report.render()
    (chain,) = rewritten
    assert chain.kind == "LayerNorm" and chain.note is None
    assert chain.replacement[0] == "layer_norm"

    assert_epsilon(chain.epsilon, e["epsilon"], e["precision"])
    rank = main_view(path(name)).rank(chain.x)
    assert chain.axes == [a % rank for a in e["axes"]]
    # fp32 programs to 1e-5; anything fp16 on the way (mixed: the output, or gamma's multiply) to fp16's 2e-3
    assert math.isfinite(chain.error) and chain.error < (1e-5 if e["precision"] == "fp32" else 2e-3)

    # the op written: its axes and eps are the chain's (eps in the op's dtype), gamma/beta bound where they can be
    view, op = the_layer_norm(str(out))
    assert view.const(op, "axes").tolist() == chain.axes
    eps = view.const(op, "epsilon")
    assert float(eps) == float(eps.dtype.type(chain.epsilon))
    assert {p for p in ("gamma", "beta") if p in op.inputs} == expected_bound(name)
    for p in expected_bound(name):
        assert getattr(chain, p) is not None  # what the chain read as gamma/beta is what got bound

    metadata = read_package(out).spec.description.metadata.userDefined
    assert metadata[PROVENANCE] == str(e["layer_norms"])
    assert "com.github.mlopt.rms_norm_rewrites" not in metadata

    result = verify_packages(path(name), out)
    assert result.passed, result.render()
    again = optimize_package(out, tmp_path / "again.mlpackage")
    assert again.rewrites == 0
    assert read_package(tmp_path / "again.mlpackage").spec.description.metadata.userDefined[PROVENANCE] == "1"


@pytest.mark.parametrize("name", REWRITE)
def test_rewritten_ops(name, tmp_path):
    """The exact op sequence after the rewrite (ops nothing reads left out: see test_nothing_left_unread): the
    chain's reduce ops gone."""
    out = tmp_path / "o.mlpackage"
    optimize_package(path(name), out)
    dead = {output for _, output in dead_ops(str(out))}
    live = [op.type for op in main_view(str(out)).main.operations
            if op.type != "const" and op.outputs[0].name not in dead]
    assert live == expected_ops(name)
    assert not {"reduce_mean", "reduce_sum", "sub", "sqrt", "rsqrt", "real_div", "pow", "square"} & set(live)


@pytest.mark.parametrize("name", REWRITE)
def test_nothing_left_unread(name, tmp_path):
    """No op of the old chain survives without a reader, and a second run finds no candidate at all."""
    out = tmp_path / "o.mlpackage"
    optimize_package(path(name), out)
    assert dead_ops(str(out)) == []
    assert op_types(str(out)) == expected_ops(name)
    assert not chains(optimize_package(out, dry_run=True))


# -- every compute-units setting -------------------------------------------------------------------------------
@pytest.mark.parametrize("units", ["CPU_ONLY", "CPU_AND_GPU", "ALL"])
@pytest.mark.parametrize("name", ["bert_fp16_ios17", "cohere_mixed_sub16_ios17", "rwkv7_ln_x_fp32_ios15",
                                  "llama_rmsnorm_fp16_ios17", "llama_rmsnorm_mixed_ios15"])
def test_layer_norm_rewrites_for_every_compute_units(name, units, tmp_path):
    """As coremltools' own LayerNorm fusion, the rule pays everywhere; the RMSNorm trick only for CPU_AND_NE
    (the RMSNorm is reported "matched" and the model written back unchanged)."""
    out = tmp_path / "o.mlpackage"
    report = optimize_package(path(name), out, compute_units=units)
    e = EXPECTED[name]
    assert [c.status for c in chains(report, "layer_norm")] == ["rewritten"] * e["layer_norms"]
    assert [c.status for c in chains(report, "rms_norm")] == ["matched"] * e["rms_norms"]
    assert report.rewrites == e["layer_norms"]
    if e["rms_norms"]:
        assert file_digest(out / MODEL) == file_digest(os.path.join(path(name), MODEL))
    else:
        assert "layer_norm" in op_types(str(out))


def test_one_cpu_only_run_rewrites_layernorm_and_only_reports_rmsnorm(tmp_path, capsys):
    code = main(["optimize", path("bert_fp16_ios17"), path("llama_rmsnorm_fp16_ios17"), "--out-dir",
                 str(tmp_path / "out"), "--compute-units", "CPU_ONLY", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    statuses = {os.path.basename(m["input"]): (m["status"], [(c["rule"], c["status"]) for f in m["report"]["functions"]
                                                              for c in f["chains"]]) for m in result["models"]}
    assert statuses == {
        "bert_fp16_ios17.mlpackage": ("rewritten", [("layer_norm", "rewritten")]),
        "llama_rmsnorm_fp16_ios17.mlpackage": ("unchanged", [("rms_norm", "matched")]),
    }
    assert result["rewrites"] == 1


# -- --skip / --only -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_skip_layer_norm(name, tmp_path):
    """skip=["layer_norm"]: no LayerNorm touched; a chain the rule would rewrite says "skipped (--skip)", a
    near-miss keeps its own reason; with no RMSNorm in the model the output is the input, byte for byte."""
    e = EXPECTED[name]
    out = tmp_path / "o.mlpackage"
    report = optimize_package(path(name), out, skip=["layer_norm"])
    ln = chains(report, "layer_norm")
    assert all(c.status == "left alone" for c in ln)
    assert [c.reason for c in ln] == ["skipped (--skip)"] * e["layer_norms"] + (
        [NEGATIVE_REASON[impl(name)](e["precision"])] if impl(name) in NEGATIVE_REASON else [])
    assert report.rewrites == e["rms_norms"]
    if not e["rms_norms"]:
        assert file_digest(out / MODEL) == file_digest(os.path.join(path(name), MODEL))
    else:
        assert [c.status for c in chains(report, "rms_norm")] == ["rewritten"]


@pytest.mark.parametrize("name", RMS)
def test_only_layer_norm_leaves_rmsnorm_alone(name, tmp_path):
    out = tmp_path / "o.mlpackage"
    report = optimize_package(path(name), out, only=["layer_norm"])
    (chain,) = chains(report)
    assert (chain.rule, chain.status, chain.reason) == ("rms_norm", "left alone", "not selected (--only)")
    assert file_digest(out / MODEL) == file_digest(os.path.join(path(name), MODEL))
    # and without --only the same model's RMSNorm is the rms_norm rule's, never the layer_norm rule's
    (chain,) = chains(optimize_package(path(name), dry_run=True))
    assert (chain.rule, chain.status) == ("rms_norm", "would rewrite")


@pytest.mark.parametrize("name", ["bert_fp32_ios17", "keras3_fp16_ios15"])
def test_only_layer_norm_still_rewrites_layernorm(name):
    report = optimize_package(path(name), dry_run=True, only=["layer_norm"])
    assert [(c.rule, c.status) for c in chains(report)] == [("layer_norm", "would rewrite")]


# -- left alone ------------------------------------------------------------------------------------------------
# Each is the real cause:
#   annotated_transformer: std = sqrt(var * N/(N-1)) (torch's unbiased std) - the first failing condition; its eps
#     outside the sqrt would fail next. N = 64: 64/63 = 1.01587, in fp16 1.015625.
#   cross_axis_centring: mean over axis 1 subtracted, variance over axis -1.
#   other_tensor_variance: x centred, but the variance is y's.
#   restormer_biasfree: var of x - mean, but it divides x itself: x / sqrt(var + eps) * w.
NEGATIVE_REASON = {
    "annotated_transformer": lambda p: f"the variance is scaled by {'1.01587' if p == 'fp32' else '1.01562'}: "
                                       "not a mean",
    "cross_axis_centring": lambda p: "mean over axes [1], variance over [2]: not one LayerNorm",
    "other_tensor_variance": lambda p: "centres one tensor and normalises another",
    "restormer_biasfree": lambda p: "normalises a tensor that is not mean-centred (x / std(x)): not a LayerNorm",
}
NEGATIVE_FORM = {
    "annotated_transformer": "reduce_mean -> sub -> square -> reduce_mean -> mul -> sqrt",
    "cross_axis_centring": "reduce_mean -> sub -> pow -> reduce_mean",
    "other_tensor_variance": "reduce_mean -> sub -> pow -> reduce_mean -> add -> rsqrt -> mul",
    "restormer_biasfree": "reduce_mean -> sub -> square -> reduce_mean -> add -> sqrt -> real_div",
}


@pytest.mark.parametrize("name", [n for n in NEGATIVE if impl(n) in NEGATIVE_REASON])
def test_near_miss_left_alone_with_its_reason(name, tmp_path, capsys):
    out = tmp_path / "o.mlpackage"
    report = optimize_package(path(name), out)
    (chain,) = chains(report)
    reason = NEGATIVE_REASON[impl(name)](EXPECTED[name]["precision"])
    assert (chain.rule, chain.kind, chain.status, chain.reason) == ("layer_norm", "LayerNorm", "left alone", reason)
    assert chain.form == NEGATIVE_FORM[impl(name)]
    assert report.rewrites == 0 and report.left_alone == 1
    assert file_digest(out / MODEL) == file_digest(os.path.join(path(name), MODEL))
    assert main(["inspect", path(name)]) == 0
    assert f"      reason: {reason}" in capsys.readouterr().out.splitlines()


@pytest.mark.parametrize("name", [n for n in RMS])
def test_rmsnorm_is_no_layer_norm(name):
    """llama's RMSNorm (no mean subtracted) is the rms_norm rule's alone."""
    report = optimize_package(path(name), dry_run=True)
    assert [(c.rule, c.status) for c in chains(report)] == [("rms_norm", "would rewrite")]


@pytest.mark.parametrize("name", NATIVE)
def test_native_layer_norm_has_nothing_to_do(name, tmp_path):
    out = tmp_path / "o.mlpackage"
    report = optimize_package(path(name), out)
    assert not chains(report) and report.rewrites == 0
    assert report.functions[0].note.endswith("layer_norm: a native LayerNorm already")
    assert file_digest(out / MODEL) == file_digest(os.path.join(path(name), MODEL))


# -- inspect --json --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", REWRITE)
def test_inspect_json(name, capsys):
    assert main(["inspect", path(name), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (chain,) = [c for f in report["functions"] for c in f["chains"]]
    (api,) = chains(optimize_package(path(name), dry_run=True))
    assert (chain["rule"], chain["kind"], chain["status"]) == ("layer_norm", "LayerNorm", "would rewrite")
    assert {k: chain[k] for k in ("axes", "epsilon", "gamma", "beta", "x", "output", "dtype")} == {
        "axes": api.axes, "epsilon": api.epsilon, "gamma": api.gamma, "beta": api.beta, "x": api.x,
        "output": api.output, "dtype": api.dtype}


def test_inspect_json_values(capsys):
    assert main(["inspect", path("bert_fp16_ios17"), "--json"]) == 0
    (chain,) = json.loads(capsys.readouterr().out)["functions"][0]["chains"]
    assert {k: chain[k] for k in ("rule", "kind", "axes", "epsilon", "gamma", "beta")} == {
        "rule": "layer_norm", "kind": "LayerNorm", "axes": [2], "epsilon": 2.0**-24, "gamma": "weight_to_fp16",
        "beta": "bias_to_fp16"}
    # a grouped norm's per-channel affine comes after the reshape back: not the chain's
    assert main(["inspect", path("rwkv7_ln_x_fp32_ios17"), "--json"]) == 0
    (chain,) = json.loads(capsys.readouterr().out)["functions"][0]["chains"]
    assert (chain["gamma"], chain["beta"], chain["axes"]) == (None, None, [2])
    assert chain["epsilon"] == pytest.approx(6.4e-4, rel=1e-7)
