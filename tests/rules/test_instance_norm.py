"""The InstanceNorm rule (rules/instance_norm.py): coremltools' instance-norm patterns 1-4, saved unfused
(fixtures/coreml_norms/, built by fixtures/make_coreml_norm_fixtures.py from TestFuseLayerNormOrInstanceNorm), and
programs built here for what the fixtures do not show: the epsilon fp16 would spoil, a sum scaled by 1/N for other
sizes, --skip/--only, JSON and provenance, and the conversion-time passes.
"""

import json
import os
import sys

import numpy as np
import pytest

import coremltools as ct
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.frontend.milproto.load import load
from coremltools.converters.mil.mil import types

from conftest import FIXTURES, chains, file_digest, fixture_path, load_in_coremltools, main_view, op_types, run_package, tree_digest
from mlopt import optimize_package
from mlopt.cli import main
from mlopt.coreml import convert
from mlopt.package.reader import read_package
from mlopt.analyses.verify import verify_packages

sys.path.insert(0, FIXTURES)
import make_coreml_norm_fixtures as make  # noqa: E402  (the MIL-builder bodies of the fixtures; no torch)

SET = os.path.join(FIXTURES, "coreml_norms")
with open(os.path.join(SET, "expected.json")) as _f:
    EXPECTED = json.load(_f)
INSTANCE_NORMS = sorted(n for n, e in EXPECTED.items() if e["kind"] == "instance_norm")
MODEL = os.path.join("Data", "com.apple.CoreML", "model.mlmodel")
PROVENANCE = "com.github.mlopt.instance_norm_rewrites"
f16, f32 = np.float16, np.float32


def path(name):
    return fixture_path(name, "coreml_norms")


def loaded_ops(out):
    """The op types coremltools' own program loader reads back (it re-runs type inference on every op)."""
    return [op.op_type for op in load_in_coremltools(str(out)).functions["main"].operations if op.op_type != "const"]


def loaded_norm(out):
    """The instance_norm op as coremltools' loader reads it back (gamma/beta values from weight.bin)."""
    model = ct.models.MLModel(str(out), skip_model_load=True)
    spec = model.get_spec()
    program = load(spec, spec.specificationVersion, model.weights_dir)
    (op,) = [op for op in program.functions["main"].operations if op.op_type == "instance_norm"]
    return op


def replacement(name):
    """What each layout becomes: instance_norm channels first, layer_norm and the affine after it channels last
    (between the transposes of the channel-last data format, which stay)."""
    e = EXPECTED[name]
    ops = ["instance_norm"] if e["layout"] == "channels first" else ["layer_norm", "mul", "add"]
    if name.startswith("in_p1_transposed"):
        ops = ["transpose", *ops, "transpose"]
    return ["cast", *ops, "cast"] if e["dtype"] == "fp16" and e["target"] == "iOS15" else ops


@pytest.mark.parametrize("name", INSTANCE_NORMS)
def test_instance_norm_is_rewritten_to_one_native_norm(name, tmp_path):
    e = EXPECTED[name]
    out = tmp_path / "o.mlpackage"
    report = optimize_package(path(name), out)
    (chain,) = chains(report)
    assert (chain.rule, chain.kind, chain.status, chain.reason) == ("instance_norm", "InstanceNorm", "rewritten", None)
    assert (chain.axes, chain.layout) == (e["axes"], e["layout"])
    assert chain.summary == f"{e['layout']}, axes {','.join(map(str, e['axes']))}, eps 1e-05"
    assert chain.error < (2e-3 if e["dtype"] == "fp16" else 1e-6)
    assert loaded_ops(out) == replacement(name)
    assert read_package(out).spec.description.metadata.userDefined[PROVENANCE] == "1"
    result = verify_packages(path(name), out)
    assert result.passed, result.render()
    again = optimize_package(out, tmp_path / "again.mlpackage")
    assert again.rewrites == 0 and chains(again) == []


@pytest.mark.parametrize("name", ["in_p1_nchw_fp32_ios15", "in_p2_fp16_ios17", "in_p4_fp32_ios17"])
def test_per_channel_gamma_and_beta_become_instance_norm_parameters(name, tmp_path):
    """gamma/beta of shape (1, C, 1, 1) are bound to instance_norm as (C,) constants of x's dtype, the values the
    chain multiplied and added."""
    out = tmp_path / "o.mlpackage"
    optimize_package(path(name), out)
    op = loaded_norm(out)
    source = {"in_p1": (3, 4), "in_p2": (9, 10), "in_p4": (11, 12)}[name[:5]]  # the fixture script's seeds
    dtype = "fp16" if "fp16" in name else "fp32"
    for var, seed in zip((op.gamma, op.beta), source):
        np.testing.assert_array_equal(var.val, make.rand((1, 5, 1, 1), seed, dtype).reshape(5))
    assert op.epsilon.val.dtype == (f16 if dtype == "fp16" else f32)


@pytest.mark.parametrize("name", ["in_p1_nchw_fp16_ios15", "in_p1_transposed_fp32_ios17"])
def test_the_same_input_gives_the_same_bytes(name, tmp_path):
    optimize_package(path(name), tmp_path / "a.mlpackage")
    optimize_package(path(name), tmp_path / "b.mlpackage")
    assert tree_digest(tmp_path / "a.mlpackage") == tree_digest(tmp_path / "b.mlpackage")


def test_pattern_3_has_no_gamma_or_beta(tmp_path):
    out = tmp_path / "o.mlpackage"
    optimize_package(path("in_p3_fp32_ios17"), out)
    (op,) = [op for op in main_view(str(out)).main.operations if op.type == "instance_norm"]
    assert sorted(op.inputs) == ["epsilon", "x"]


# -- programs built here -------------------------------------------------------------------------------------------
NCHW = (1, 4, 5, 6)
GAMMA = np.random.default_rng(1).uniform(0.5, 1.5, (1, 4, 1, 1))
BETA = np.random.default_rng(2).uniform(-1, 1, (1, 4, 1, 1))


def save(tmp_path, body, dtype="fp32", target=ct.target.iOS17, shape=NCHW, name="in"):
    mil = types.fp16 if dtype == "fp16" else types.fp32
    prog = mb.program(input_specs=[mb.TensorSpec(shape=shape, dtype=mil)], opset_version=target)(body)
    src = str(tmp_path / f"{name}.mlpackage")
    ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=target, pass_pipeline=ct.PassPipeline.EMPTY,
               compute_precision=ct.precision.FLOAT16 if dtype == "fp16" else ct.precision.FLOAT32,
               skip_model_load=True).save(src)
    return src


def textbook(x, eps, dtype, scale=None, gamma=GAMMA, beta=BETA):
    """(x - mean) / sqrt(var + eps) * gamma + beta over the spatial axes; the mean reduce_sum * `scale` if given."""
    np_dtype = f16 if dtype == "fp16" else f32
    if scale is None:
        mean = mb.reduce_mean(x=x, axes=[2, 3], keep_dims=True)
    else:
        mean = mb.mul(x=mb.reduce_sum(x=x, axes=[2, 3], keep_dims=True), y=np_dtype(scale))
    d = mb.sub(x=x, y=mean)
    var = mb.reduce_mean(x=mb.square(x=d), axes=[2, 3], keep_dims=True)
    y = mb.mul(x=d, y=mb.rsqrt(x=mb.add(x=var, y=np_dtype(eps))))
    if gamma is not None:
        y = mb.mul(x=y, y=gamma.astype(np_dtype))
    return y if beta is None else mb.add(x=y, y=beta.astype(np_dtype))


def test_an_epsilon_fp16_would_spoil_keeps_gamma_and_beta_after(tmp_path):
    """fp16 x, eps 1e-7 added in fp32 (19% off in fp16), fp16 gamma and beta. From iOS17 instance_norm's gamma, beta
    and epsilon share one type: the rewrite keeps eps fp32 and applies gamma and beta after the instance_norm."""

    def body(x):
        d = mb.sub(x=x, y=mb.reduce_mean(x=x, axes=[2, 3], keep_dims=True))
        var = mb.cast(x=mb.reduce_mean(x=mb.square(x=d), axes=[2, 3], keep_dims=True), dtype="fp32")
        inv = mb.cast(x=mb.rsqrt(x=mb.add(x=var, y=f32(1e-7))), dtype="fp16")
        return mb.add(x=mb.mul(x=mb.mul(x=d, y=inv), y=GAMMA.astype(f16)), y=BETA.astype(f16))

    src, out = save(tmp_path, body, dtype="fp16"), tmp_path / "o.mlpackage"
    report = optimize_package(src, out)
    (chain,) = chains(report)
    assert (chain.rule, chain.status) == ("instance_norm", "rewritten")
    assert chain.epsilon == pytest.approx(1e-7 + 1e-12, rel=1e-6)  # rsqrt's own default epsilon is the chain's too
    assert loaded_ops(out) == ["instance_norm", "mul", "add"]
    op = loaded_norm(out)
    assert (op.gamma, op.beta) == (None, None)
    assert op.epsilon.val.dtype == f32 and op.epsilon.val == f32(chain.epsilon)
    result = verify_packages(src, out)
    assert result.passed, result.render()


def test_sums_scaled_for_other_sizes_are_no_means(tmp_path):
    """coremltools' pattern 4 with both sums scaled by 1/40 over 6 x 7 = 42 positions: no mean, no norm. The scale
    is checked against the real axis sizes, and the chain is left alone with it."""
    src, out = save(tmp_path, make.pattern_4("fp32", 1 / 40, 1 / 40), shape=(3, 5, 6, 7)), tmp_path / "o.mlpackage"
    report = optimize_package(src, out)
    assert [(c.rule, c.status, c.reason) for c in chains(report)] == [
        ("layer_norm", "left alone", "the mean's reduce_sum is scaled by 0.025, not 1/42: not a mean")]
    assert file_digest(out / MODEL) == file_digest(os.path.join(src, MODEL))


def test_a_tensor_centred_by_an_off_scale_sum_is_no_instance_norm(tmp_path):
    """x - sum(x) / 40 over 30 positions, then normalised by its own root mean square: no InstanceNorm. What it
    is - an RMSNorm of that tensor - the rms_norm rule may rewrite, keeping the subtraction; the result is the
    chain's."""
    src, out = save(tmp_path, lambda x: textbook(x, 1e-5, "fp32", scale=1 / 40)), tmp_path / "o.mlpackage"
    report = optimize_package(src, out)
    assert [c.rule for c in chains(report)] == ["rms_norm"]
    assert "instance_norm" not in op_types(str(out)) and "sub" in op_types(str(out))
    result = verify_packages(src, out)
    assert result.passed, result.render()


def test_a_sum_scaled_by_one_over_the_spatial_size_is_a_mean(tmp_path):
    src, out = save(tmp_path, lambda x: textbook(x, 1e-5, "fp32", scale=1 / 30)), tmp_path / "o.mlpackage"
    report = optimize_package(src, out)
    assert [(c.rule, c.status) for c in chains(report)] == [("instance_norm", "rewritten")]
    assert loaded_ops(out) == ["instance_norm"]


@pytest.mark.parametrize("shape, axes, gamma_shape, rule", [
    ((1, 4, 5, 6), [2, 3], (5, 6), "layer_norm"),  # gamma along the normalised axes: a LayerNorm's affine
    ((1, 4, 5, 6), [2, 3], (4, 5, 1), "layer_norm"),  # gamma varies along C and H: no per-channel gamma
    ((1, 4, 5, 6), [1, 2], (6,), "instance_norm"),  # channels last, per channel
    ((1, 4, 5, 6), [3], (6,), "layer_norm"),  # one axis: a LayerNorm over the last axis
    ((4, 5, 6), [1, 2], (6,), "layer_norm"),  # rank 3: no image
], ids=["gamma_spatial", "gamma_c_and_h", "channels_last", "last_axis", "rank3"])
def test_which_rule_a_norm_belongs_to(shape, axes, gamma_shape, rule, tmp_path):
    gamma = np.random.default_rng(3).uniform(0.5, 1.5, gamma_shape).astype(f32)

    def body(x):
        mean = mb.reduce_mean(x=x, axes=axes, keep_dims=True)
        d = mb.sub(x=x, y=mean)
        var = mb.reduce_mean(x=mb.square(x=d), axes=axes, keep_dims=True)
        return mb.mul(x=mb.mul(x=d, y=mb.rsqrt(x=mb.add(x=var, y=f32(1e-5)))), y=gamma)

    src, out = save(tmp_path, body, shape=shape), tmp_path / "o.mlpackage"
    report = optimize_package(src, out)
    assert [(c.rule, c.status) for c in chains(report)] == [(rule, "rewritten")]
    result = verify_packages(src, out)
    assert result.passed, result.render()


# -- the rule contract: --skip / --only, JSON, inspect -------------------------------------------------------------
def test_skip_instance_norm_leaves_the_model_unchanged(tmp_path):
    out = tmp_path / "o.mlpackage"
    report = optimize_package(path("in_p2_fp32_ios17"), out, skip=["instance_norm"])
    assert [(c.rule, c.status, c.reason) for c in chains(report)] == [("instance_norm", "left alone", "skipped (--skip)")]
    assert file_digest(out / MODEL) == file_digest(os.path.join(path("in_p2_fp32_ios17"), MODEL))


def test_only_layer_norm_does_not_take_an_instance_norm(tmp_path):
    out = tmp_path / "o.mlpackage"
    report = optimize_package(path("in_p1_nhwc_rank1_fp32_ios17"), out, only=["layer_norm"])
    assert [(c.rule, c.status, c.reason) for c in chains(report)] == [
        ("instance_norm", "left alone", "not selected (--only)")]
    assert "reduce_mean" in op_types(str(out))


def test_json_report_carries_the_layout(tmp_path, capsys):
    code = main(["optimize", path("in_p1_nhwc_rank1_fp16_ios17"), "--out-dir", str(tmp_path / "out"), "--json"])
    assert code == 0
    (model,) = json.loads(capsys.readouterr().out)["models"]
    (chain,) = [c for f in model["report"]["functions"] for c in f["chains"]]
    assert (chain["rule"], chain["status"], chain["layout"], chain["axes"]) == (
        "instance_norm", "rewritten", "channels last", [1, 2])
    assert chain["epsilon"] == float(f16(1e-5))  # as the fp16 program stores it


def test_inspect_names_the_instance_norm(capsys):
    assert main(["inspect", path("in_p3_fp32_ios15")]) == 0
    out = capsys.readouterr().out
    assert "reduce_mean -> sub -> square -> reduce_mean -> add -> rsqrt -> mul -> mul -> mul -> add" in out
    assert "InstanceNorm" in out and "channels first, axes 2,3" in out


# -- conversion time -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["in_p2_fp32_ios17", "in_p1_nhwc_rank1_fp32_ios15", "in_p4_fp16_ios17"])
def test_conversion_time_passes_rewrite_what_optimize_rewrites(name, tmp_path):
    """With coremltools' own fusion removed (as a program from another pipeline arrives), mlopt.convert's passes
    give the ops `mlopt optimize` writes, numerically equal to the unfused conversion."""
    spec = make.FIXTURES[name]
    target = getattr(ct.target, spec["target"])
    mil = types.fp16 if spec["dtype"] == "fp16" else types.fp32
    precision = ct.precision.FLOAT16 if spec["dtype"] == "fp16" else ct.precision.FLOAT32

    def program():
        return mb.program(input_specs=[mb.TensorSpec(shape=spec["shape"], dtype=mil)], opset_version=target)(spec["body"])

    pipeline = ct.PassPipeline.DEFAULT
    pipeline.remove_passes(["common::fuse_layernorm_or_instancenorm"])
    model = convert(program(), convert_to="mlprogram", minimum_deployment_target=target, compute_precision=precision,
                    pass_pipeline=pipeline, compute_units=ct.ComputeUnit.CPU_ONLY, skip_model_load=True)
    model.save(str(tmp_path / "mlopt.mlpackage"))
    # pattern 2 ends in mul(gamma) -> add(beta), which coremltools' fuse_elementwise_to_batchnorm turns into a
    # batch_norm before mlopt's fusion runs: the affine stays that batch_norm, after a gamma-less instance_norm
    expected = ["instance_norm", "batch_norm"] if name.startswith("in_p2") else replacement(name)
    assert loaded_ops(tmp_path / "mlopt.mlpackage") == expected
    result = verify_packages(path(name), tmp_path / "mlopt.mlpackage")
    assert result.passed, result.render()


def test_interpreter_instance_norm_is_the_float64_formula(tmp_path):
    """mlopt's interpreter runs instance_norm as the textbook formula (the self-check and verify rely on it)."""
    out = tmp_path / "o.mlpackage"
    optimize_package(path("in_p1_nchw_fp32_ios17"), out)
    x = np.random.default_rng(4).standard_normal((3, 5, 6, 7)).astype(f32)
    (got,) = run_package(str(out), {"x": x}).values()
    op = loaded_norm(out)
    gamma, beta = (v.val.astype(np.float64).reshape(1, 5, 1, 1) for v in (op.gamma, op.beta))
    v = x.astype(np.float64)
    mean, var = v.mean(axis=(2, 3), keepdims=True), v.var(axis=(2, 3), keepdims=True)
    np.testing.assert_allclose(got, (v - mean) / np.sqrt(var + 1e-5) * gamma + beta, rtol=1e-5, atol=1e-5)
