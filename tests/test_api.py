"""The Python API: mlopt.optimize(MLModel) and mlopt.optimize_package."""

import coremltools as ct
import pytest

from conftest import fixture_path, inputs_for, run_package
from mlopt import BadInputError, optimize, optimize_package
from mlopt.numerics.compare import compare


def non_const_ops(model):
    spec = model.get_spec()
    function = spec.mlProgram.functions["main"]
    return [op.type for op in function.block_specializations[function.opset].operations if op.type != "const"]


def test_optimize_mlmodel_cpu_and_ne(tmp_path):
    model = ct.models.MLModel(fixture_path("hf_fp16_ios17"), skip_model_load=True, compute_units=ct.ComputeUnit.CPU_AND_NE)
    result = optimize(model)
    assert non_const_ops(result) == ["mul", "concat", "layer_norm", "slice_by_index", "mul"]
    assert result.compute_unit == ct.ComputeUnit.CPU_AND_NE
    # the returned model saves and runs the same as the original in the interpreter
    result.save(str(tmp_path / "r.mlpackage"))
    feeds = inputs_for(fixture_path("hf_fp16_ios17"))
    a, b = run_package(fixture_path("hf_fp16_ios17"), feeds), run_package(str(tmp_path / "r.mlpackage"), feeds)
    assert compare(b["mul_1"], a["mul_1"]).passed
    # the input model is untouched
    assert "layer_norm" not in non_const_ops(model)


@pytest.mark.parametrize("units", [ct.ComputeUnit.ALL, ct.ComputeUnit.CPU_ONLY, ct.ComputeUnit.CPU_AND_GPU])
def test_optimize_mlmodel_other_units_unchanged(units):
    model = ct.models.MLModel(fixture_path("hf_fp16_ios17"), skip_model_load=True, compute_units=units)
    assert non_const_ops(optimize(model)) == non_const_ops(model)


def test_optimize_mlmodel_explicit_units_override_the_models():
    model = ct.models.MLModel(fixture_path("hf_fp16_ios17"), skip_model_load=True, compute_units=ct.ComputeUnit.ALL)
    assert "layer_norm" in non_const_ops(optimize(model, compute_units=ct.ComputeUnit.CPU_AND_NE))


def test_optimize_package_returns_report(tmp_path):
    report = optimize_package(fixture_path("decoder_fp16_ios17"), tmp_path / "o.mlpackage")
    assert report.rewrites == 5 and report.written


def test_optimize_package_bad_input_raises():
    with pytest.raises(BadInputError, match="no such file or directory"):
        optimize_package("/nonexistent/x.mlpackage", "/tmp/never")


def test_unknown_compute_units():
    with pytest.raises(ValueError, match="unknown compute units 'NPU'"):
        optimize_package(fixture_path("hf_fp16_ios17"), dry_run=True, compute_units="NPU")
