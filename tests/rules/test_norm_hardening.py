"""Programs built to make the rules misread a chain (found by an adversarial review), end to end: each is saved as
a package, optimized, and the result compared with the original on inputs the random ones of `verify` would not
cover (a large mean), or checked for the exact reason it is left alone."""

import numpy as np
import pytest

import coremltools as ct
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import types

from conftest import chains, op_types, run_package
from mlopt.graph.dtypes import FLOAT32
from mlopt import optimize_package

f32, f16 = np.float32, np.float16


def save(tmp_path, body, shape, dtype=types.fp32, name="in"):
    prog = mb.program(input_specs=[mb.TensorSpec(shape=shape, dtype=dtype)], opset_version=ct.target.iOS17)(body)
    path = str(tmp_path / f"{name}.mlpackage")
    ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17, pass_pipeline=ct.PassPipeline.EMPTY,
               compute_precision=ct.precision.FLOAT32 if dtype == types.fp32 else ct.precision.FLOAT16,
               skip_model_load=True).save(path)
    return path


def agree_off_zero_mean(src, out, shape, offset=30.0, rtol=1e-5):
    x = (np.random.default_rng(1).standard_normal(shape) + offset).astype(np.float32)
    before, after = run_package(src, {"x": x}), run_package(out, {"x": x})
    assert sorted(before) == sorted(after)
    for name in before:
        np.testing.assert_allclose(after[name], before[name], rtol=rtol, atol=rtol)


def centred_chain(x, mean, axes=(2,)):
    d = mb.sub(x=x, y=mean)
    v = mb.reduce_mean(x=mb.mul(x=d, y=d), axes=list(axes), keep_dims=True)
    return mb.mul(x=d, y=mb.rsqrt(x=mb.add(x=v, y=f32(1e-5))))


def test_a_mean_scaled_slightly_off_is_no_layer_norm_mean(tmp_path):
    """mean * (1 + 4e-4) is not the mean: the layer_norm rule must not drop the scale (only inputs with a large
    mean would show it). What stays is an RMSNorm of the tensor the chain builds, rewritten as such."""
    shape = (1, 2, 64)
    src = save(tmp_path, lambda x: centred_chain(x, mb.mul(x=mb.reduce_mean(x=x, axes=[2], keep_dims=True), y=f32(1 + 4e-4))), shape)
    out = str(tmp_path / "o.mlpackage")
    report = optimize_package(src, out)
    assert [c.rule for c in chains(report) if c.status == "rewritten"] == ["rms_norm"]
    agree_off_zero_mean(src, out, shape)


def test_a_mean_broadcast_along_the_wrong_axis_is_no_layer_norm_mean(tmp_path):
    """reduce_mean(keep_dims=False) of (1, 8, 8) is (1, 8), which broadcasts as (1, 1, 8): along the axis it
    reduced. That is no centring; whatever is rewritten computes what the original does."""
    shape = (1, 8, 8)
    src = save(tmp_path, lambda x: centred_chain(x, mb.reduce_mean(x=x, axes=[2], keep_dims=False)), shape)
    out = str(tmp_path / "o.mlpackage")
    report = optimize_package(src, out)
    assert "layer_norm" not in [c.rule for c in chains(report) if c.status == "rewritten"]
    agree_off_zero_mean(src, out, shape, offset=3.0)


def test_many_exact_scales_earn_no_tolerance(tmp_path):
    """fp16: forty mul(1.0) then mul(1.04) is a scale of 1.04, not a mean, however many exact constants precede it."""
    def body(x):
        v = mb.reduce_mean(x=mb.mul(x=x, y=x), axes=[2], keep_dims=True)
        for _ in range(40):
            v = mb.mul(x=v, y=f16(1.0))
        v = mb.mul(x=v, y=f16(1.04))
        return mb.mul(x=x, y=mb.rsqrt(x=mb.add(x=v, y=f16(1e-5))))

    (chain,) = chains(optimize_package(save(tmp_path, body, (1, 4, 64), types.fp16), dry_run=True))
    assert (chain.status, chain.reason) == ("left alone", f"the mean square is scaled by {float(f16(1.04)):g}: not a mean")


@pytest.mark.parametrize("spelling, reason", [
    (lambda var: mb.add(x=mb.sub(x=var, y=f32(1.0)), y=f32(1.5)), "subtracts something other than E[x]^2 from the variance"),
    (lambda var: mb.real_div(x=f32(2.0), y=var), "divides by the variance"),
], ids=["sub_constant", "divides_by"])
def test_other_subtractions_from_the_variance(tmp_path, spelling, reason):
    def body(x):
        m = mb.reduce_mean(x=x, axes=[2], keep_dims=True)
        var = mb.sub(x=mb.reduce_mean(x=mb.mul(x=x, y=x), axes=[2], keep_dims=True), y=mb.mul(x=m, y=m))
        return mb.mul(x=mb.sub(x=x, y=m), y=mb.rsqrt(x=spelling(var)))

    found = chains(optimize_package(save(tmp_path, body, (1, 4, 16)), dry_run=True))
    assert [(c.rule, c.status, c.reason) for c in found if c.rule == "layer_norm"] == [("layer_norm", "left alone", reason)]


def test_e_x2_subtracted_twice(tmp_path):
    def body(x):
        m = mb.reduce_mean(x=x, axes=[2], keep_dims=True)
        m2 = mb.mul(x=m, y=m)
        var = mb.sub(x=mb.sub(x=mb.reduce_mean(x=mb.mul(x=x, y=x), axes=[2], keep_dims=True), y=m2), y=m2)
        return mb.mul(x=mb.sub(x=x, y=m), y=mb.rsqrt(x=mb.add(x=var, y=f32(1e-5))))

    found = chains(optimize_package(save(tmp_path, body, (1, 4, 16)), dry_run=True))
    assert [(c.rule, c.reason) for c in found] == [("layer_norm", "subtracts E[x]^2 from the variance twice")]


def test_gamma_over_unsorted_axes_is_bound_in_ascending_order(tmp_path):
    """A LayerNorm over axes [-1, -2] with a (4, 6) gamma: layer_norm's gamma has x's shape over the axes in
    ascending order, so the rewrite reads the axes sorted; coremltools' own loader accepts the result."""
    from coremltools.converters.mil.frontend.milproto.load import load

    gamma = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)

    def body(x):
        d = mb.sub(x=x, y=mb.reduce_mean(x=x, axes=[-1, -2], keep_dims=True))
        v = mb.reduce_mean(x=mb.mul(x=d, y=d), axes=[-1, -2], keep_dims=True)
        return mb.mul(x=mb.mul(x=d, y=mb.rsqrt(x=mb.add(x=v, y=f32(1e-5)))), y=gamma)

    src, out = save(tmp_path, body, (1, 8, 4, 6)), str(tmp_path / "o.mlpackage")
    (chain,) = chains(optimize_package(src, out))
    assert (chain.rule, chain.status, chain.axes) == ("layer_norm", "rewritten", [2, 3])
    assert op_types(out) == ["layer_norm"]
    model = ct.models.MLModel(out, skip_model_load=True)
    spec = model.get_spec()
    load(spec, spec.specificationVersion, model.weights_dir)  # raises on a gamma of the wrong shape
    agree_off_zero_mean(src, out, (1, 8, 4, 6), offset=3.0)


@pytest.mark.parametrize("rule", ["rms_norm", "layer_norm"])
def test_full_tensor_constants_along_rows_are_checked_at_the_declared_shape(tmp_path, rule):
    """StableHLO writes 1/N and eps as (1, 4, 1) tensors; the self-check then feeds the declared shape (its
    usual few rows would not broadcast against them) and the chain is rewritten, checked."""
    eps, inv_n = np.full((1, 4, 1), 1e-5, np.float32), np.full((1, 4, 1), 1 / 16, np.float32)

    def body(x):
        if rule == "layer_norm":
            x = mb.sub(x=x, y=mb.reduce_mean(x=x, axes=[2], keep_dims=True))
        ms = mb.mul(x=mb.reduce_sum(x=mb.mul(x=x, y=x), axes=[2], keep_dims=True), y=inv_n)
        return mb.mul(x=x, y=mb.rsqrt(x=mb.add(x=ms, y=eps)))

    src, out = save(tmp_path, body, (1, 4, 16)), str(tmp_path / "o.mlpackage")
    (chain,) = chains(optimize_package(src, out))
    assert (chain.rule, chain.status) == (rule, "rewritten") and chain.error < 1e-5
    agree_off_zero_mean(src, out, (1, 4, 16), offset=3.0)


def test_concat_along_an_axis_layer_norm_does_not_normalise_is_not_the_trick(tmp_path):
    def body(x):
        both = mb.concat(values=[x, mb.mul(x=x, y=f32(-1))], axis=1)
        return mb.layer_norm(x=both, axes=[-1], epsilon=f32(1e-5))

    assert chains(optimize_package(save(tmp_path, body, (1, 4, 16)), dry_run=True)) == []


def test_sqrt_inverted_by_inverse_names_inverse(tmp_path):
    def body(x):
        ms = mb.reduce_mean(x=mb.mul(x=x, y=x), axes=[2], keep_dims=True)
        return mb.mul(x=x, y=mb.inverse(x=mb.sqrt(x=mb.add(x=ms, y=f32(1e-5)))))

    (chain,) = chains(optimize_package(save(tmp_path, body, (1, 4, 16)), dry_run=True))
    assert chain.reason == "square root inverted by `inverse`, which adds its own epsilon outside the root"


def test_the_conversion_route_keeps_epsilon_as_the_fusion_read_it():
    """Under FLOAT16, coremltools' add_fp16_cast puts a cast to fp16 before the fused op's epsilon; the lowering
    reads the value before it, and the iOS17 layer_norm keeps 1e-6 in fp32 (fp16 would make it 1.013e-6)."""
    import mlopt

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4, 16))], opset_version=ct.target.iOS17)
    def prog(x):
        ms = mb.reduce_mean(x=mb.mul(x=x, y=x), axes=[-1], keep_dims=True)
        return mb.mul(x=x, y=mb.rsqrt(x=mb.add(x=ms, y=f32(1e-6)), epsilon=f32(0)))

    model = mlopt.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17, skip_model_load=True,
                          compute_units=ct.ComputeUnit.CPU_AND_NE, compute_precision=ct.precision.FLOAT16)
    function = model.get_spec().mlProgram.functions["main"]
    ops = function.block_specializations[function.opset].operations
    (ln,) = [op for op in ops if op.type == "layer_norm"]
    (eps,) = [op for op in ops if op.type == "const" and op.outputs[0].name == ln.inputs["epsilon"].arguments[0].name]
    assert eps.attributes["val"].type.tensorType.dataType == FLOAT32
    assert eps.attributes["val"].immediateValue.tensor.floats.values[0] == f32(1e-6)


@pytest.mark.parametrize("rule", ["rms_norm", "layer_norm"])
def test_stablehlo_spellings_at_full_size_are_checked_by_rows(tmp_path, monkeypatch, rule):
    """StableHLO bakes the row count in - a statistic reshaped to (1, S, 1), 1/N and eps as full (1, S, 1)
    tensors, gamma tiled to (1, S, D) - and at S x D = 2048 x 1024 the declared shape is twice the self-check's
    budget. The check feeds its few rows all the same, through stand-ins that hold for any row count
    (numerics/row_free.py), and the chain is rewritten, checked."""
    from conftest import record_fed

    s, d = 2048, 1024
    gamma = np.linspace(0.5, 1.5, d).astype(np.float32)

    def body(x):
        inv_n, eps = np.full((1, s, 1), 1.0 / d, np.float32), np.full((1, s, 1), 1e-6, np.float32)
        if rule == "layer_norm":
            mean = mb.tile(x=mb.mul(x=mb.reshape(x=mb.reduce_sum(x=x, axes=[2], keep_dims=False), shape=[1, s, 1]), y=inv_n),
                           reps=[1, 1, d])
            x = mb.sub(x=x, y=mean)
        ms = mb.mul(x=mb.reshape(x=mb.reduce_sum(x=mb.mul(x=x, y=x), axes=[2], keep_dims=False), shape=[1, s, 1]), y=inv_n)
        normed = mb.mul(x=x, y=mb.tile(x=mb.rsqrt(x=mb.add(x=ms, y=eps)), reps=[1, 1, d]))
        return mb.mul(x=normed, y=mb.tile(x=mb.reshape(x=gamma, shape=[1, 1, d]), reps=[1, s, 1]))

    src = save(tmp_path, body, (1, s, d))
    fed = record_fed(monkeypatch)
    (chain,) = chains(optimize_package(src, dry_run=True))
    assert (chain.rule, chain.status) == (rule, "would rewrite"), chain.reason
    assert chain.error < 1e-5
    assert fed and all(shape[1] < s for shape in fed)  # rows, never the declared (1, 2048, 1024)


def test_a_reshape_to_a_shape_computed_at_run_time_is_refused(tmp_path):
    """The statistic reshaped by its own shape read backwards: with flexible sizes, rows move at run time. The
    declared shapes (all unknown) cannot show it, so such a reshape is no restoring reshape."""
    from coremltools.converters.mil.mil import get_new_symbol

    s0, s1 = get_new_symbol(), get_new_symbol()

    @mb.program(input_specs=[mb.TensorSpec(shape=(s0, s1, 8))], opset_version=ct.target.iOS17)
    def prog(x):
        ms = mb.reduce_mean(x=mb.mul(x=x, y=x), axes=[-1], keep_dims=True)
        r = mb.reshape(x=ms, shape=mb.gather(x=mb.shape(x=ms), indices=np.array([1, 0, 2], np.int32), axis=0))
        return mb.mul(x=x, y=mb.rsqrt(x=mb.add(x=r, y=f32(1e-5))))

    path = str(tmp_path / "in.mlpackage")
    ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17, pass_pipeline=ct.PassPipeline.EMPTY,
               inputs=[ct.TensorType(name="x", shape=(ct.RangeDim(1, 16), ct.RangeDim(1, 16), 8))],
               compute_precision=ct.precision.FLOAT32, skip_model_load=True).save(path)
    (chain,) = chains(optimize_package(path, dry_run=True))
    assert (chain.status, chain.reason) == (
        "left alone", "reshape of the statistic to a shape computed at run time: cannot check it keeps the rows")


def test_a_gamma_beyond_the_compute_dtype_is_named(tmp_path):
    """fp16 x normalised in an fp32 island, times an fp32 gamma of 1e5: the rewrite computes in x's fp16, where
    that gamma is inf. The chain is left alone, and the reason says why."""
    def body(x):
        x32 = mb.cast(x=x, dtype="fp32")
        ms = mb.reduce_mean(x=mb.mul(x=x32, y=x32), axes=[-1], keep_dims=True)
        return mb.mul(x=mb.mul(x=x32, y=mb.rsqrt(x=mb.add(x=ms, y=f32(1e-5)))), y=np.full(16, 1e5, np.float32))

    prog = mb.program(input_specs=[mb.TensorSpec(shape=(1, 4, 16), dtype=types.fp16)], opset_version=ct.target.iOS17)(body)
    path = str(tmp_path / "in.mlpackage")
    ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17, pass_pipeline=ct.PassPipeline.EMPTY,
               compute_precision=ct.precision.FLOAT32, skip_model_load=True).save(path)
    (chain,) = chains(optimize_package(path, dry_run=True))
    assert (chain.status, chain.reason) == ("left alone", "gamma holds 100000, beyond the fp16 range the rewrite computes in; not rewritten")


def test_a_size_one_constant_that_raises_the_rank_is_no_scalar(tmp_path):
    """pow(x, (1, 1, 1)-shaped 2) makes a (4, 8) x a (1, 4, 8) square: read as a scalar, the chain's axes would be
    read against the wrong rank and the output shape would change. It is not read as the exponent 2."""
    def body(x):
        ms = mb.reduce_mean(x=mb.pow(x=x, y=np.full((1, 1, 1), 2.0, np.float32)), axes=[1], keep_dims=True)
        return mb.mul(x=x, y=mb.rsqrt(x=mb.add(x=ms, y=f32(1e-6))))

    src, out = save(tmp_path, body, (4, 8)), str(tmp_path / "o.mlpackage")
    report = optimize_package(src, out)
    assert report.rewrites == 0
    assert op_types(out) == op_types(src)


def test_an_rms_norm_and_a_moments_layer_norm_sharing_one_mean_square(tmp_path):
    """Both chains start at one reduce_mean(x^2): each rule keeps its match there, both are rewritten, nothing of
    the old chains is left, and a second run finds nothing to do."""
    def body(x):
        ex2 = mb.reduce_mean(x=mb.mul(x=x, y=x), axes=[2], keep_dims=True)
        rms = mb.mul(x=x, y=mb.rsqrt(x=mb.add(x=ex2, y=f32(1e-6))))
        m = mb.reduce_mean(x=x, axes=[2], keep_dims=True)
        var = mb.sub(x=ex2, y=mb.mul(x=m, y=m))
        ln = mb.mul(x=mb.sub(x=x, y=m), y=mb.rsqrt(x=mb.add(x=var, y=f32(1e-5))))
        return rms, ln

    src, out = save(tmp_path, body, (1, 4, 16)), str(tmp_path / "o.mlpackage")
    report = optimize_package(src, out)
    assert sorted((c.rule, c.status) for c in chains(report)) == [("layer_norm", "rewritten"), ("rms_norm", "rewritten")]
    assert sorted(op_types(out)) == sorted(["mul", "concat", "layer_norm", "slice_by_index", "layer_norm"])
    assert optimize_package(out, dry_run=True).rewrites == 0
    agree_off_zero_mean(src, out, (1, 4, 16), offset=3.0, rtol=1e-4)


@pytest.mark.parametrize("route", ["optimize", "convert"])
def test_fp16_gamma_and_an_epsilon_fp16_would_spoil(tmp_path, route):
    """fp16 x in an fp32 LayerNorm island with an fp32 gamma, eps 1e-7 (19% off in fp16). From iOS17 layer_norm's
    gamma and epsilon share one type: the rewrite keeps eps fp32 and applies gamma after, and coremltools' own
    loader accepts the program (an fp16 gamma beside an fp32 epsilon it rejects, and the conversion route
    crashed on it)."""
    import mlopt
    from coremltools.converters.mil.frontend.milproto.load import load

    gamma = np.linspace(0.5, 1.5, 16).astype(np.float32)

    def prog():
        @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4, 16), dtype=types.fp16)], opset_version=ct.target.iOS17)
        def island(x):
            x32 = mb.cast(x=x, dtype="fp32")
            d = mb.sub(x=x32, y=mb.reduce_mean(x=x32, axes=[-1], keep_dims=True))
            v = mb.reduce_mean(x=mb.mul(x=d, y=d), axes=[-1], keep_dims=True)
            return mb.mul(x=mb.real_div(x=d, y=mb.sqrt(x=mb.add(x=v, y=f32(1e-7)))), y=gamma)

        return island

    kwargs = dict(convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17, skip_model_load=True,
                  compute_precision=ct.precision.FLOAT32)
    out = str(tmp_path / "o.mlpackage")
    if route == "optimize":
        src = str(tmp_path / "in.mlpackage")
        ct.convert(prog(), pass_pipeline=ct.PassPipeline.EMPTY, **kwargs).save(src)
        assert optimize_package(src, out).rewrites == 1
    else:
        mlopt.convert(prog(), compute_units=ct.ComputeUnit.CPU_ONLY, **kwargs).save(out)
    assert "layer_norm" in op_types(out)
    model = ct.models.MLModel(out, skip_model_load=True)
    spec = model.get_spec()
    load(spec, spec.specificationVersion, model.weights_dir)
