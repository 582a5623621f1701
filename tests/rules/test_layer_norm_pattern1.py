"""The LayerNorm rule on coremltools' LayerNorm pattern 1 and the other arrangements of scale, shift and mean.

coremltools' pass `common::fuse_layernorm_or_instancenorm` and its tests (TestFuseLayerNormOrInstanceNorm) write
a LayerNorm as x * [gamma * rsqrt(var + eps)] + (beta - mean * [gamma * rsqrt(var + eps)]): the mean subtracted
after scaling. fixtures/coreml_norms/ holds those programs saved unfused (fixtures/make_coreml_norm_fixtures.py);
the programs built here vary the arrangement (gamma after, the sign after the product, a final sub) and break it
(a wrong sign, another mean, another inverse root), which must be left alone with the reason.
"""

import json
import os

import numpy as np
import pytest

import coremltools as ct
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import types

from conftest import FIXTURES, chains, fixture_path, load_in_coremltools, main_view, op_types, run_package
from mlopt import optimize_package
from mlopt.analyses.verify import verify_packages

SET = os.path.join(FIXTURES, "coreml_norms")
with open(os.path.join(SET, "expected.json")) as _f:
    EXPECTED = json.load(_f)
LAYER_NORMS = sorted(n for n, e in EXPECTED.items() if e["kind"] == "layer_norm")
NO_NORMS = sorted(n for n, e in EXPECTED.items() if e["kind"] == "none")
NOT_CENTRED = "normalises a tensor that is not mean-centred (x / std(x)): not a LayerNorm"
NOT_MEAN_AFTER = "adds something other than -mean(x) * inverse root after scaling x: not a LayerNorm"


def path(name):
    return fixture_path(name, "coreml_norms")


def loaded_ops(out):
    """The op types coremltools' own program loader reads back (it re-runs type inference on every op)."""
    return [op.op_type for op in load_in_coremltools(str(out)).functions["main"].operations if op.op_type != "const"]


def edge_casts(name, ops):
    """fp16 on iOS15 has no fp16 model I/O: coremltools' cast in and cast out stay around the replacement."""
    e = EXPECTED[name]
    return ["cast", *ops, "cast"] if e["dtype"] == "fp16" and e["target"] == "iOS15" else ops


@pytest.mark.parametrize("name", LAYER_NORMS)
def test_pattern_1_becomes_one_layer_norm(name, tmp_path):
    out = tmp_path / "o.mlpackage"
    report = optimize_package(path(name), out)
    (chain,) = chains(report)
    assert (chain.rule, chain.status, chain.reason) == ("layer_norm", "rewritten", None)
    assert chain.form == "reduce_mean -> sub -> square -> reduce_mean -> add -> rsqrt -> mul(gamma) -> mul -> mul -> add(beta) -> add"
    assert chain.fields["axes"] == EXPECTED[name]["axes"]
    assert chain.error < (2e-3 if EXPECTED[name]["dtype"] == "fp16" else 1e-6)
    # gamma/beta fold into layer_norm where they are of the normalised shape; a (W,) gamma over (H, W) does not
    after = ["mul", "add"] if name.startswith("ln_p1_nchw_gamma_along_w") else []
    assert loaded_ops(out) == edge_casts(name, ["layer_norm", *after])
    result = verify_packages(path(name), out)
    assert result.passed, result.render()


def test_gamma_and_beta_fold_into_layer_norm(tmp_path):
    out = tmp_path / "o.mlpackage"
    optimize_package(path("ln_p1_r3_axes2_fp32_ios17"), out)
    (op,) = [op for op in main_view(str(out)).main.operations if op.type == "layer_norm"]
    assert sorted(op.inputs) == ["axes", "beta", "epsilon", "gamma", "x"]


@pytest.mark.parametrize("name", NO_NORMS)
def test_no_norm_is_left_alone_with_its_reason(name, tmp_path):
    out = tmp_path / "o.mlpackage"
    report = optimize_package(path(name), out)
    (chain,) = chains(report)
    assert (chain.rule, chain.status) == ("layer_norm", "left alone")
    assert chain.reason == NO_NORM_REASONS[name.rsplit("_", 2)[0]](EXPECTED[name])
    assert chain.reason != NOT_CENTRED
    assert op_types(str(out)) == op_types(path(name))


WRONG_AXES = {"0_1": ([0], [1]), "1_0": ([1], [0]), "2_1": ([2], [1]), "1_2": ([1], [2]), "12_1": ([1, 2], [1]),
              "1_12": ([1], [1, 2])}  # test_ane_layer_norm_wrong_axes: first_axes, second_axes
NO_NORM_REASONS = {
    "in_p4_placeholder": lambda e: "the mean's reduce_sum is scaled by "
                                   f"{'3.33333e-05' if e['dtype'] == 'fp32' else '3.3319e-05'}, not 1/42: not a mean",
    "in_p1_gamma_rank5": lambda e: "the normalised tensor has another shape than the tensor it normalises",
    **{f"wrong_axes_{tag}": (lambda e, a=a, b=b: f"mean over axes {a}, variance over {b}: not one LayerNorm")
       for tag, (a, b) in WRONG_AXES.items()},
}


# -- arrangements built here ---------------------------------------------------------------------------------------
SHAPE = (2, 3, 16)
f32 = np.float32
GAMMA = np.random.default_rng(1).uniform(0.5, 1.5, 16).astype(f32)
BETA = np.random.default_rng(2).uniform(-1, 1, 16).astype(f32)


def save(tmp_path, body, name="in"):
    prog = mb.program(input_specs=[mb.TensorSpec(shape=SHAPE, dtype=types.fp32)], opset_version=ct.target.iOS17)(body)
    src = str(tmp_path / f"{name}.mlpackage")
    ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17, pass_pipeline=ct.PassPipeline.EMPTY,
               compute_precision=ct.precision.FLOAT32, skip_model_load=True).save(src)
    return src


def statistics(x, axes=(2,)):
    """mean and rsqrt(var + eps) of x over `axes`, the variance of the centred x."""
    mean = mb.reduce_mean(x=x, axes=list(axes), keep_dims=True)
    var = mb.reduce_mean(x=mb.square(x=mb.sub(x=x, y=mean)), axes=list(axes), keep_dims=True)
    return mean, mb.rsqrt(x=mb.add(x=var, y=f32(1e-5)))


def gamma_after(x):
    """(x * inv - mean * inv) * gamma + beta: the mean subtracted after scaling, gamma and beta after that."""
    mean, inv = statistics(x)
    return mb.add(x=mb.mul(x=mb.sub(x=mb.mul(x=x, y=inv), y=mb.mul(x=mean, y=inv)), y=GAMMA), y=BETA)


def sign_after_product(x):
    """TensorFlow-Addons: x * inv + mean * inv * -1 (no gamma, no beta)."""
    mean, inv = statistics(x)
    return mb.add(x=mb.mul(x=inv, y=x), y=mb.mul(x=mb.mul(x=mean, y=inv), y=f32(-1.0)))


def beta_plus_negated_mean(x):
    """Keras 3: x * inv + (mul(mean, -1) * inv + beta), gamma folded into inv."""
    mean, inv = statistics(x)
    inv = mb.mul(x=inv, y=GAMMA)
    return mb.add(x=mb.mul(x=x, y=inv), y=mb.add(x=mb.mul(x=mb.mul(x=mean, y=f32(-1.0)), y=inv), y=BETA))


@pytest.mark.parametrize("body, form", [
    (gamma_after, "reduce_mean -> sub -> square -> reduce_mean -> add -> rsqrt -> mul -> mul -> sub -> mul(gamma) -> add(beta)"),
    (sign_after_product, "reduce_mean -> sub -> square -> reduce_mean -> add -> rsqrt -> mul -> mul -> mul -> add"),
    (beta_plus_negated_mean, "reduce_mean -> sub -> square -> reduce_mean -> add -> rsqrt -> mul(gamma) -> mul -> mul -> mul -> add(beta) -> add"),
], ids=lambda v: getattr(v, "__name__", ""))
def test_other_arrangements_of_the_mean_after_scaling(body, form, tmp_path):
    src, out = save(tmp_path, body), tmp_path / "o.mlpackage"
    report = optimize_package(src, out)
    (chain,) = chains(report)
    assert (chain.rule, chain.status, chain.form) == ("layer_norm", "rewritten", form)
    assert chain.error < 1e-6
    assert loaded_ops(out) == ["layer_norm"]
    # off a zero mean the two agree too (the rewrite drops no term the mean scales)
    x = (np.random.default_rng(3).standard_normal(SHAPE) * 2 + 30).astype(f32)
    np.testing.assert_allclose(run_package(str(out), {"x": x})[chain.output], run_package(src, {"x": x})[chain.output],
                               rtol=1e-4, atol=1e-4)


def wrong_sign(x):
    mean, inv = statistics(x)
    return mb.add(x=mb.mul(x=x, y=inv), y=mb.add(x=mb.mul(x=mean, y=inv), y=BETA))


def another_mean(x):
    """The mean subtracted after is over another axis than the statistics'."""
    mean, inv = statistics(x)
    other = mb.reduce_mean(x=x, axes=[1], keep_dims=True)
    return mb.add(x=mb.mul(x=x, y=inv), y=mb.sub(x=BETA, y=mb.mul(x=other, y=inv)))


def another_inverse(x):
    """The mean is scaled by a different inverse root (eps 1e-3) than x."""
    mean, inv = statistics(x)
    var = mb.reduce_mean(x=mb.square(x=mb.sub(x=x, y=mean)), axes=[2], keep_dims=True)
    inv2 = mb.rsqrt(x=mb.add(x=var, y=f32(1e-3)))
    return mb.add(x=mb.mul(x=x, y=inv), y=mb.sub(x=BETA, y=mb.mul(x=mean, y=inv2)))


def scaled_x_alone(x):
    """x * inv + beta: x scaled by the centred variance's root, no mean subtracted anywhere."""
    _, inv = statistics(x)
    return mb.mul(x=mb.mul(x=x, y=inv), y=GAMMA)


def scaled_x_plus_residual(x):
    """x * inv + x: a residual added after an uncentred x / std(x), no mean term."""
    _, inv = statistics(x)
    return mb.add(x=mb.mul(x=x, y=inv), y=x)


@pytest.mark.parametrize("body, reason", [
    (wrong_sign, NOT_MEAN_AFTER),
    (scaled_x_plus_residual, NOT_CENTRED),
    (another_mean, NOT_MEAN_AFTER),
    (another_inverse, NOT_MEAN_AFTER),
    (scaled_x_alone, NOT_CENTRED),
], ids=lambda v: getattr(v, "__name__", ""))
def test_what_is_no_mean_subtracted_after_is_left_alone(body, reason, tmp_path):
    src, out = save(tmp_path, body), tmp_path / "o.mlpackage"
    report = optimize_package(src, out)
    layer_norms = [c for c in chains(report) if c.rule == "layer_norm"]
    assert (layer_norms[0].status, layer_norms[0].reason) == ("left alone", reason)
    assert all(c.status == "left alone" for c in layer_norms)  # another_inverse: its second variance is a chain too
    assert "layer_norm" not in op_types(str(out))


def test_a_wrong_mean_scale_with_a_right_variance_scale_is_named(tmp_path):
    """E[x^2] - E[x]^2 from sums: the variance's 1/N right, the mean's a placeholder. The variance walk passes; the
    mean's scale is what makes it no LayerNorm."""

    def body(x):
        mean = mb.mul(x=mb.reduce_sum(x=x, axes=[2], keep_dims=True), y=f32(0.05))
        var = mb.sub(x=mb.mul(x=mb.reduce_sum(x=mb.mul(x=x, y=x), axes=[2], keep_dims=True), y=f32(1 / 16)),
                     y=mb.mul(x=mean, y=mean))
        inv = mb.rsqrt(x=mb.add(x=var, y=f32(1e-5)))
        return mb.add(x=mb.mul(x=inv, y=x), y=mb.sub(x=BETA, y=mb.mul(x=mean, y=inv)))

    report = optimize_package(save(tmp_path, body), tmp_path / "o.mlpackage")
    assert [(c.rule, c.status, c.reason) for c in chains(report)] == [
        ("layer_norm", "left alone", "the mean's reduce_sum is scaled by 0.05, not 1/16: not a mean")]


def test_a_root_other_than_a_square_root_or_its_inverse_is_named(tmp_path):
    def body(x):
        mean = mb.reduce_mean(x=x, axes=[2], keep_dims=True)
        d = mb.sub(x=x, y=mean)
        var = mb.reduce_mean(x=mb.square(x=d), axes=[2], keep_dims=True)
        return mb.real_div(x=d, y=mb.pow(x=mb.add(x=var, y=f32(1e-5)), y=f32(0.25)))

    report = optimize_package(save(tmp_path, body), tmp_path / "o.mlpackage")
    assert [(c.rule, c.reason) for c in chains(report)] == [("layer_norm", "root is pow(0.25), not pow(-0.5) or pow(0.5)")]
