"""Conversion-time integration: the fused mlopt_rms_norm op, the rule's fusion and lowering passes, mlopt.convert.

The passes run the rule's matcher (rules/rms_norm_pattern.py) through the pymil adapter, so they must rewrite exactly what `mlopt optimize`
rewrites: same op sequences on the same fixtures, numerically equal to a plain conversion in the interpreter.
"""

import os
import sys

import numpy as np
import pytest

import coremltools as ct
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import Function, types
from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY

from conftest import FIXTURES, op_types
from mlopt.coreml import convert, fuse_pass_name, lower_pass_name, pass_pipeline
from mlopt.rules import RULES
from mlopt.rules.rms_norm import RULE
from mlopt.analyses.verify import verify_packages
from test_rewrite import EXPECTED

sys.path.insert(0, FIXTURES)
import make_fixtures  # noqa: E402  (MIL-builder bodies of the fixtures; no torch)

FUSE, LOWER = fuse_pass_name(RULE), lower_pass_name(RULE)
UNITS = [ct.ComputeUnit.CPU_ONLY, ct.ComputeUnit.CPU_AND_GPU, ct.ComputeUnit.CPU_AND_NE, ct.ComputeUnit.ALL, None]
# mlopt optimize cannot fold a cast of a weight.bin constant; the pipeline's const elimination does
PIPELINE_DIFFERS = {"gemma_casts_fp16_ios17": (["mul", "concat", "layer_norm", "slice_by_index", "mul"])}
SAME_AS_OPTIMIZE = [n for n in sorted(EXPECTED) if n not in ("cond_branch_fp32_ios17", "while_body_fp32_ios17", "sum_scaled_fp16_ios17")]


def program(name):
    spec = make_fixtures.FIXTURES[name]
    return mb.program(input_specs=[mb.TensorSpec(shape=spec["shape"], dtype=spec["dtype"])], opset_version=spec["target"])(spec["body"])


def convert_fixture(name, converter=convert, **kwargs):
    spec = make_fixtures.FIXTURES[name]
    pipeline = kwargs.pop("pass_pipeline", None)
    if spec["skip"]:
        pipeline = pipeline or ct.PassPipeline.DEFAULT
        pipeline.remove_passes(spec["skip"])
    return converter(
        program(name), convert_to="mlprogram", minimum_deployment_target=spec["target"], compute_precision=spec["precision"],
        inputs=spec["inputs"], skip_model_load=True, pass_pipeline=pipeline, **kwargs,
    )


def main_ops(model, function="main"):
    spec = model.get_spec()
    f = spec.mlProgram.functions[function]
    return [op.type for op in f.block_specializations[f.opset].operations if op.type != "const"]


@pytest.mark.parametrize("name", SAME_AS_OPTIMIZE)
def test_convert_gives_the_same_ops_as_optimize(name, tmp_path):
    model = convert_fixture(name, compute_units=ct.ComputeUnit.CPU_AND_NE)
    assert main_ops(model) == PIPELINE_DIFFERS.get(name, EXPECTED[name][0])
    # numerically equal to a plain conversion, in mlopt's interpreter
    model.save(str(tmp_path / "mlopt.mlpackage"))
    convert_fixture(name, converter=ct.convert).save(str(tmp_path / "plain.mlpackage"))
    result = verify_packages(tmp_path / "plain.mlpackage", tmp_path / "mlopt.mlpackage")
    assert result.passed, result.render()


def test_reduce_sum_chain_through_the_pipeline():
    """With coremltools' own fuse_reduce_mean removed (as the fixture is built), the fusion still sees reduce_sum/N."""
    model = convert_fixture("sum_scaled_fp16_ios17", compute_units=ct.ComputeUnit.CPU_AND_NE)
    assert main_ops(model) == EXPECTED["sum_scaled_fp16_ios17"][0]


@pytest.mark.parametrize("units", UNITS, ids=lambda u: getattr(u, "name", "None"))
def test_convert_compute_units(units):
    kwargs = {} if units is None else {"compute_units": units}
    ops = main_ops(convert_fixture("decoder_fp16_ios17", **kwargs))
    if units == ct.ComputeUnit.CPU_AND_NE:
        assert ops.count("layer_norm") == 5 and "reduce_mean" not in ops
    else:
        assert ops == main_ops(convert_fixture("decoder_fp16_ios17", converter=ct.convert, **kwargs))
        assert ops.count("reduce_mean") == 5 and "layer_norm" not in ops


def run_pass(name, prog, units):
    graph_pass = PASS_REGISTRY[name]
    graph_pass.compute_units = None if units is None else units.name
    try:
        graph_pass(prog)
    finally:
        graph_pass.compute_units = None


def prog_ops(prog):
    return [op.op_type for op in prog.functions["main"].operations if op.op_type != "const"]


@pytest.mark.parametrize("units", UNITS, ids=lambda u: getattr(u, "name", "None"))
def test_fuse_pass_compute_units(units):
    prog = program("hf_fp32_ios17")
    before = prog_ops(prog)
    run_pass(FUSE, prog, units)
    if units == ct.ComputeUnit.CPU_AND_NE:
        assert prog_ops(prog) == ["mlopt_rms_norm"]
    else:
        assert prog_ops(prog) == before


@pytest.mark.parametrize("units", UNITS, ids=lambda u: getattr(u, "name", "None"))
def test_lower_pass_compute_units(units):
    prog = program("hf_fp32_ios17")
    run_pass(FUSE, prog, ct.ComputeUnit.CPU_AND_NE)
    run_pass(LOWER, prog, units)
    if units == ct.ComputeUnit.CPU_AND_NE:
        assert prog_ops(prog) == ["mul", "concat", "layer_norm", "slice_by_index", "mul"]
    else:
        assert prog_ops(prog) == ["mlopt_rms_norm"]


def test_pipeline_placement_and_options():
    pipeline = pass_pipeline()
    passes = pipeline.passes
    fuse_at, lower_at = passes.index("common::fuse_reduce_mean") + 1, passes.index("common::add_fp16_cast") + 1
    assert passes[fuse_at: fuse_at + len(RULES)] == [fuse_pass_name(r) for r in RULES]
    assert passes[lower_at: lower_at + len(RULES)] == [lower_pass_name(r) for r in RULES]
    for name in (FUSE, LOWER):
        (option,) = pipeline.get_options(name)
        assert (option.option_name, option.option_val) == ("compute_units", "CPU_AND_NE")
    # a user's pipeline keeps its passes and options
    custom = ct.PassPipeline.DEFAULT
    custom.set_options("common::const_elimination", {"skip_const_by_size": "1e6"})
    merged = pass_pipeline(custom)
    assert [p for p in merged.passes if not p.startswith("mlopt::")] == custom.passes
    assert merged.get_options("common::const_elimination")[0].option_val == "1e6"


@pytest.mark.parametrize("name", ["decoder_llama_fp32_ios15", "decoder_qwen3_fp16_ios17", "torch_rmsnorm_fp32_ios17", "mamba2_gated_fp16_ios15"])
def test_passes_on_programs_converted_from_pytorch(name, tmp_path):
    """Real torch conversions (fixtures/real), loaded back into pymil and run through the pipeline: as many
    layer_norms as `mlopt optimize` produces, and the same outputs."""
    from coremltools.converters.mil.frontend.milproto.load import load

    from mlopt import optimize_package

    src = os.path.join(FIXTURES, "real", f"{name}.mlpackage")
    original = ct.models.MLModel(src, skip_model_load=True)
    spec = original.get_spec()
    prog = load(spec, spec.specificationVersion, original.weights_dir)
    target = {6: ct.target.iOS15, 8: ct.target.iOS17}[spec.specificationVersion]
    model = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=target, skip_model_load=True,
                       pass_pipeline=pass_pipeline(), compute_precision=ct.precision.FLOAT32)
    model.save(str(tmp_path / "passes.mlpackage"))
    report = optimize_package(src, tmp_path / "optimize.mlpackage")
    assert op_types(str(tmp_path / "passes.mlpackage")).count("layer_norm") == report.rewrites > 0
    assert verify_packages(src, tmp_path / "passes.mlpackage").passed


@pytest.mark.parametrize("opset, dtype", [(ct.target.iOS15, np.float32), (ct.target.iOS17, np.float16), (ct.target.iOS15, np.float16)])
def test_fused_rms_norm_type_and_value_inference(opset, dtype):
    x = np.random.default_rng(0).standard_normal((2, 3, 8)).astype(dtype)
    gamma = np.linspace(0.5, 1.5, 8).astype(dtype)
    epsilon = np.float32(1e-5) if opset == ct.target.iOS17 else dtype(1e-5)
    with Function({}, opset_version=opset):
        out = mb.mlopt_rms_norm(x=x, gamma=gamma, epsilon=epsilon, axes=np.array([-1], np.int32))
    assert out.shape == (2, 3, 8) and out.dtype == types.numpy_type_to_builtin_type(dtype)
    x64 = x.astype(np.float64)
    expected = x64 / np.sqrt((x64**2).mean(axis=-1, keepdims=True) + 1e-5) * gamma.astype(np.float64)  # by hand
    np.testing.assert_allclose(out.val, expected, rtol=2e-3 if dtype == np.float16 else 1e-6)


def test_fused_rms_norm_ios15_epsilon_must_match_x():
    """iOS15's rule (as layer_norm's): epsilon in x's dtype; iOS17 accepts fp32 epsilon under fp16 x."""
    x = np.ones((1, 8), np.float16)
    with pytest.raises(ValueError):
        with Function({}, opset_version=ct.target.iOS15):
            mb.mlopt_rms_norm(x=x, epsilon=np.float32(1e-5), axes=np.array([-1], np.int32))
    with Function({}, opset_version=ct.target.iOS17):
        assert mb.mlopt_rms_norm(x=x, epsilon=np.float32(1e-5), axes=np.array([-1], np.int32)).dtype == types.fp16


@pytest.mark.parametrize("units", [ct.ComputeUnit.CPU_ONLY, ct.ComputeUnit.ALL, ct.ComputeUnit.CPU_AND_NE])
@pytest.mark.parametrize("precision", [ct.precision.FLOAT32, ct.precision.FLOAT16])
def test_layer_norm_rule_at_conversion_time(units, precision, tmp_path):
    """The second rule goes through the same passes: E[x^2] - E[x]^2 (which coremltools' own fusion does not
    know) becomes one layer_norm for every compute-units setting, numerically equal to a plain conversion."""
    h = 16
    gamma = np.linspace(0.5, 1.5, h).astype(np.float32)

    def prog():  # a fresh program per conversion: ct.convert rewrites the one it is given in place
        @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4, h))], opset_version=ct.target.iOS17)
        def moments_layer_norm(x):
            mean = mb.reduce_mean(x=x, axes=[-1], keep_dims=True)
            var = mb.sub(x=mb.reduce_mean(x=mb.square(x=x), axes=[-1], keep_dims=True), y=mb.mul(x=mean, y=mean))
            return mb.mul(x=mb.mul(x=mb.sub(x=x, y=mean), y=mb.rsqrt(x=mb.add(x=var, y=np.float32(1e-5)))), y=gamma)

        return moments_layer_norm

    kwargs = dict(convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17, compute_precision=precision,
                  skip_model_load=True)
    model = convert(prog(), compute_units=units, **kwargs)
    ops = main_ops(model)
    assert ops == (["layer_norm"] if precision == ct.precision.FLOAT32 else ["cast", "layer_norm", "cast"])  # gamma folded in
    model.save(str(tmp_path / "mlopt.mlpackage"))
    plain = ct.convert(prog(), **kwargs)
    assert "layer_norm" not in main_ops(plain)
    plain.save(str(tmp_path / "plain.mlpackage"))
    result = verify_packages(tmp_path / "plain.mlpackage", tmp_path / "mlopt.mlpackage")
    assert result.passed, result.render()
