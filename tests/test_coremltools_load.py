"""Every package mlopt writes loads with coremltools' own program loader (`milproto.load`).

conftest.py checks every package a test writes at the test's end; this file holds the cases that once failed it
(a LayerNorm with a bias and no scale: `layer_norm` with `beta` and no `gamma`, which coremltools' type inference
cannot read) and runs every committed fixture through `optimize` so no rule/fixture pair goes unchecked.
"""

import glob
import os

import numpy as np
import pytest

import coremltools as ct

from conftest import FIXTURES, inputs_for, load_in_coremltools, op_types, run_package
from mlopt import optimize_package
from mlopt.coreml import pass_pipeline
from mlopt.numerics.compare import compare
from mlopt.package import read_package
from mlopt.package.writer import write_package

BIAS_ONLY = sorted(glob.glob(os.path.join(FIXTURES, "bias_only", "*.mlpackage")))
EVERY_FIXTURE = sorted(os.path.relpath(p, FIXTURES) for p in glob.glob(os.path.join(FIXTURES, "**", "*.mlpackage"), recursive=True))


def _layer_norm(program):
    (op,) = [op for op in program.functions["main"].operations if op.op_type == "layer_norm"]
    return op


def _bias(program):
    """The constant the source chain adds last (LayerNormANE's bias, shaped (1, C, 1, 1))."""
    (add,) = [op for op in program.functions["main"].operations if op.op_type == "add" and op.y.val is not None and op.y.val.size > 1]
    return add.y.val


@pytest.mark.parametrize("src", BIAS_ONLY, ids=os.path.basename)
def test_bias_only_channels_first_layer_norm_saved_route(src, tmp_path):
    """(B, C, 1, S) LayerNorm over axis 1 ending in `+ bias`: the rewrite folds the bias as beta and gives
    layer_norm a gamma of ones beside it; coremltools' loader reads the result and it computes what the chain did."""
    out = str(tmp_path / "out.mlpackage")
    report = optimize_package(src, out)
    assert report.rewrites == 1
    assert [t for t in op_types(out) if t != "cast"] == ["layer_norm"]
    layer_norm = _layer_norm(load_in_coremltools(out))
    bias = _bias(load_in_coremltools(src))
    assert list(layer_norm.axes.val) == [1]
    np.testing.assert_array_equal(layer_norm.gamma.val, np.ones(bias.size, bias.dtype))
    np.testing.assert_array_equal(layer_norm.beta.val, bias.reshape(-1))
    assert layer_norm.gamma.dtype == layer_norm.beta.dtype == layer_norm.x.dtype
    fp32 = "fp32" in src
    for seed in range(2):
        feeds = inputs_for(src, seed=seed)
        before, after = run_package(src, feeds), run_package(out, feeds)
        for value in before:
            assert compare(after[value], before[value], rtol=1e-5 if fp32 else 1e-2, atol=1e-6 if fp32 else 1e-2).passed


@pytest.mark.parametrize("src", BIAS_ONLY, ids=os.path.basename)
def test_bias_only_channels_first_layer_norm_conversion_route(src, tmp_path):
    """The same chain through mlopt's conversion-time passes: one layer_norm with a gamma of ones, and the saved
    model loads back in coremltools."""
    program = load_in_coremltools(src)
    spec = read_package(src).spec
    target = {6: ct.target.iOS15, 8: ct.target.iOS17}[spec.specificationVersion]
    model = ct.convert(program, convert_to="mlprogram", minimum_deployment_target=target, skip_model_load=True,
                       pass_pipeline=pass_pipeline(compute_units="ALL"), compute_precision=ct.precision.FLOAT32)
    out = str(tmp_path / "converted.mlpackage")
    model.save(out)
    layer_norm = _layer_norm(load_in_coremltools(out))
    np.testing.assert_array_equal(layer_norm.gamma.val, np.ones(layer_norm.beta.val.shape, layer_norm.beta.val.dtype))
    assert [t for t in op_types(out) if t != "cast"] == ["layer_norm"]


def test_loader_rejects_a_beta_without_gamma(tmp_path):
    """What the check guards against: the same output with the gamma input taken off no longer loads."""
    src, out = BIAS_ONLY[0], str(tmp_path / "out.mlpackage")
    optimize_package(src, out)
    package = read_package(out)
    function = package.spec.mlProgram.functions["main"]
    (layer_norm,) = [op for op in function.block_specializations[function.opset].operations if op.type == "layer_norm"]
    del layer_norm.inputs["gamma"]
    broken = str(tmp_path / "broken.mlpackage")
    write_package(package, package.spec, broken)
    with pytest.raises(AttributeError, match="'NoneType' object has no attribute 'shape'"):
        load_in_coremltools(broken)
    os.rename(broken, str(tmp_path / "broken.checked-here"))  # keep it away from conftest's end-of-test check


@pytest.mark.parametrize("name", EVERY_FIXTURE)
def test_every_fixture_and_its_output_load(name, tmp_path):
    """Every committed fixture, as given and as optimized (every rule that fires on it): both load."""
    src = os.path.join(FIXTURES, name)
    load_in_coremltools(src)
    out = str(tmp_path / "out.mlpackage")
    optimize_package(src, out)
    load_in_coremltools(out)
