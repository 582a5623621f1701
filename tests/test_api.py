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


@pytest.mark.parametrize("units", [ct.ComputeUnit.ALL, ct.ComputeUnit.CPU_ONLY, ct.ComputeUnit.CPU_AND_GPU, "all"])
def test_optimize_mlmodel_other_units_unchanged_with_a_warning(units):
    model = ct.models.MLModel(fixture_path("hf_fp16_ios17"), skip_model_load=True)
    name = getattr(units, "name", str(units).upper())
    with pytest.warns(UserWarning, match=f"mlopt.optimize: compute units {name}: the LayerNorm trick only pays where"):
        result = optimize(model, compute_units=units)
    assert non_const_ops(result) == non_const_ops(model)
    assert result.compute_unit == ct.ComputeUnit[name]


def test_optimize_defaults_to_cpu_and_ne_whatever_the_model_was_loaded_with(recwarn):
    """coremltools loads with ComputeUnit.ALL by default: mlopt.optimize still targets the ANE, as the CLI does."""
    model = ct.models.MLModel(fixture_path("hf_fp16_ios17"), skip_model_load=True)
    assert model.compute_unit == ct.ComputeUnit.ALL
    result = optimize(model)
    assert "layer_norm" in non_const_ops(result) and result.compute_unit == ct.ComputeUnit.CPU_AND_NE
    assert [w for w in recwarn if issubclass(w.category, UserWarning) and "mlopt" in str(w.message)] == []


def test_optimize_returns_its_report_on_request():
    model = ct.models.MLModel(fixture_path("decoder_fp16_ios17"), skip_model_load=True)
    result, report = optimize(model, report=True)
    assert report.rewrites == 5 and report.written is False and report.output is None
    assert report.input == fixture_path("decoder_fp16_ios17")
    assert non_const_ops(result).count("layer_norm") == 5


def test_mlopt_optimize_works_every_time_through_the_package_attribute():
    """The package attribute, not `from mlopt import optimize`: twice, and after optimize_package ran."""
    import mlopt

    model = ct.models.MLModel(fixture_path("hf_fp16_ios17"), skip_model_load=True)
    assert "layer_norm" in non_const_ops(mlopt.optimize(model))
    assert "layer_norm" in non_const_ops(mlopt.optimize(model))
    mlopt.optimize_package(fixture_path("hf_fp16_ios17"), dry_run=True)
    assert "layer_norm" in non_const_ops(mlopt.optimize(model))


def test_mlopt_optimize_in_a_fresh_interpreter():
    import subprocess
    import sys

    script = (
        "import coremltools as ct, mlopt\n"
        f"m = ct.models.MLModel({fixture_path('hf_fp16_ios17')!r}, skip_model_load=True)\n"
        f"mlopt.optimize_package({fixture_path('hf_fp16_ios17')!r}, dry_run=True)\n"
        "for _ in range(2):\n"
        "    s = mlopt.optimize(m).get_spec().mlProgram.functions['main']\n"
        "    assert any(op.type == 'layer_norm' for op in s.block_specializations[s.opset].operations)\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_dir_lists_the_public_names():
    import mlopt

    names = dir(mlopt)
    for public in ("optimize", "optimize_package", "convert", "Report", "BadInputError", "MloptError", "__version__"):
        assert public in names


def test_optimize_package_returns_report(tmp_path):
    report = optimize_package(fixture_path("decoder_fp16_ios17"), tmp_path / "o.mlpackage")
    assert report.rewrites == 5 and report.written


def test_optimize_package_bad_input_raises():
    with pytest.raises(BadInputError, match="no such file or directory"):
        optimize_package("/nonexistent/x.mlpackage", "/tmp/never")


def test_optimize_package_names_its_own_force_keyword(tmp_path):
    """Python callers read `force=True` where the command line says `--force`, for the same refusal."""
    src = fixture_path("hf_fp16_ios17")
    out = tmp_path / "o.mlpackage"
    out.mkdir()
    with pytest.raises(BadInputError) as refused:
        optimize_package(src, out)
    assert str(refused.value) == f"{out}: already exists (use force=True to replace it)"
    assert refused.value.cli_text == f"{out}: already exists (use --force to replace it)"
    with pytest.raises(BadInputError) as in_place:
        optimize_package(src, src)
    assert str(in_place.value) == f"{src}: is the input package (in-place needs force=True)"
    with pytest.raises(BadInputError) as not_a_package:
        optimize_package(src, out, force=True)
    assert str(not_a_package.value) == (
        f"{out}: is a folder but not an .mlpackage (no Manifest.json); force=True replaces only a package, so it is left alone"
    )


def test_unknown_compute_units():
    with pytest.raises(ValueError, match="unknown compute units 'NPU'"):
        optimize_package(fixture_path("hf_fp16_ios17"), dry_run=True, compute_units="NPU")


def test_the_package_ships_its_type_marker_and_json_schema():
    """Installed as a wheel (as CI does), the package carries py.typed and the JSON Schema of its reports."""
    import importlib.resources
    import json

    files = importlib.resources.files("mlopt")
    assert (files / "py.typed").is_file()
    schema = json.loads((files / "report.schema.json").read_text())
    assert schema["title"] == "mlopt --json output, schema version 1"


def test_public_api_has_type_hints():
    import inspect

    import mlopt

    for function in (mlopt.optimize, mlopt.optimize_package):
        signature = inspect.signature(function)
        assert signature.parameters["verify"].annotation is bool
    assert inspect.signature(mlopt.optimize_package).return_annotation is mlopt.Report


def test_no_submodule_shadows_a_function_of_its_package():
    """`mlopt.optimize` and `mlopt.cli.main` stay functions after every submodule is imported."""
    import importlib
    import pkgutil

    import mlopt
    import mlopt.cli

    for module in pkgutil.walk_packages(mlopt.__path__, "mlopt."):
        if not module.name.startswith(("mlopt.coreml", "mlopt.__main__")):
            importlib.import_module(module.name)
    assert callable(mlopt.optimize) and callable(mlopt.optimize_package) and callable(mlopt.cli.main)


@pytest.mark.parametrize("verify", [True, False])
def test_optimize_mlmodel_refuses_a_special_weight_file_whatever_verify_says(tmp_path, verify):
    """A FIFO as weight.bin is bad input for mlopt.optimize as for the command line, also with verify=False (which
    reads no weight otherwise): it must not reach coremltools' copy of the weights folder."""
    import os
    import shutil

    src = tmp_path / "m.mlpackage"
    shutil.copytree(os.path.join(os.path.dirname(fixture_path("decoder_fp16_ios17")), "converters",
                                 "stablehlo_reshape_fp32_ios17.mlpackage"), src)
    weight = src / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    weight.unlink()
    os.mkfifo(weight)
    model = ct.models.MLModel(str(src), skip_model_load=True)
    with pytest.raises(BadInputError, match=r"weight\.bin.* is a FIFO, not a regular file"):
        optimize(model, verify=verify)
