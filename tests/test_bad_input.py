"""Bad input: one line naming the file and the problem on stderr, exit 2, nothing written, input untouched."""

import json
import os
import shutil

import pytest

from conftest import fixture_path, run as run_cli, tree_digest
from mlopt.package.proto import Model_pb2

MODEL = os.path.join("Data", "com.apple.CoreML", "model.mlmodel")


@pytest.fixture
def package(tmp_path):
    """A writable copy of a fixture package."""
    path = tmp_path / "in.mlpackage"
    shutil.copytree(fixture_path("hf_fp16_ios17"), path)
    return path


def assert_bad_input(capsys, tmp_path, argv, message):
    before = {p: tree_digest(p) for p in map(str, tmp_path.iterdir()) if os.path.isdir(p)}
    code, out, err = run_cli(capsys, "optimize", *argv)
    assert code == 2
    assert out == ""
    assert err == f"mlopt: error: {message}\n"
    assert "Traceback" not in err
    after = {p: tree_digest(p) for p in map(str, tmp_path.iterdir()) if os.path.isdir(p)}
    assert after == before  # nothing written, nothing modified, no temporary folders left


def test_missing_path(capsys, tmp_path):
    missing = tmp_path / "nope.mlpackage"
    assert_bad_input(capsys, tmp_path, [missing, tmp_path / "out.mlpackage"], f"{missing}: no such file or directory")


def test_plain_file(capsys, tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"not a model")
    assert_bad_input(capsys, tmp_path, [path, tmp_path / "out.mlpackage"], f"{path}: not an .mlpackage (a file, not a folder)")


def test_mlmodel_file(capsys, tmp_path):
    path = tmp_path / "model.mlmodel"
    path.write_bytes(b"")
    assert_bad_input(
        capsys, tmp_path, [path, tmp_path / "out.mlpackage"],
        f"{path}: is a single .mlmodel file; mlopt works on .mlpackage folders (ML programs)",
    )


def test_folder_without_manifest(capsys, tmp_path):
    path = tmp_path / "empty.mlpackage"
    path.mkdir()
    (path / "x").write_text("x")
    assert_bad_input(capsys, tmp_path, [path, tmp_path / "out.mlpackage"], f"{path}: not an .mlpackage (no Manifest.json)")


def test_manifest_not_json(capsys, tmp_path, package):
    (package / "Manifest.json").write_text("{ nope")
    code, out, err = run_cli(capsys, "optimize", package, tmp_path / "out.mlpackage")
    assert code == 2 and out == ""
    assert err.startswith(f"mlopt: error: {package / 'Manifest.json'}: not valid JSON (") and err.count("\n") == 1
    assert not (tmp_path / "out.mlpackage").exists()


def test_manifest_without_root_model(capsys, tmp_path, package):
    (package / "Manifest.json").write_text(json.dumps({"itemInfoEntries": {}}))
    assert_bad_input(
        capsys, tmp_path, [package, tmp_path / "out.mlpackage"],
        f"{package / 'Manifest.json'}: names no root model (rootModelIdentifier/itemInfoEntries)",
    )


def test_manifest_pointing_outside(capsys, tmp_path, package):
    manifest = json.loads((package / "Manifest.json").read_text())
    manifest["itemInfoEntries"][manifest["rootModelIdentifier"]]["path"] = "../../../outside.mlmodel"
    (package / "Manifest.json").write_text(json.dumps(manifest))
    assert_bad_input(
        capsys, tmp_path, [package, tmp_path / "out.mlpackage"],
        f"{package / 'Manifest.json'}: root model path '../../../outside.mlmodel' points outside the package",
    )


def test_missing_model_file(capsys, tmp_path, package):
    os.remove(package / MODEL)
    model = os.path.realpath(package / MODEL)
    assert_bad_input(
        capsys, tmp_path, [package, tmp_path / "out.mlpackage"], f"{model}: root model file named in Manifest.json is missing"
    )


def test_corrupt_protobuf(capsys, tmp_path, package):
    (package / MODEL).write_bytes(b"\x0a\xff\xff\xff\xff\x0f garbage")
    code, out, err = run_cli(capsys, "optimize", package, tmp_path / "out.mlpackage")
    model = os.path.realpath(package / MODEL)
    assert code == 2 and out == ""
    assert err.startswith(f"mlopt: error: {model}: not a valid Core ML model protobuf (") and err.count("\n") == 1
    assert not (tmp_path / "out.mlpackage").exists()


def test_truncated_protobuf(capsys, tmp_path, package):
    data = (package / MODEL).read_bytes()
    (package / MODEL).write_bytes(data[: len(data) // 2])
    code, out, err = run_cli(capsys, "optimize", package, tmp_path / "out.mlpackage")
    assert code == 2 and "not a valid Core ML model protobuf" in err and err.count("\n") == 1


def test_neural_network_model(capsys, tmp_path, package):
    spec = Model_pb2.Model()
    spec.specificationVersion = 4
    layer = spec.neuralNetwork.layers.add()
    layer.name = "relu"
    layer.activation.ReLU.SetInParent()
    (package / MODEL).write_bytes(spec.SerializeToString())
    model = os.path.realpath(package / MODEL)
    assert_bad_input(
        capsys, tmp_path, [package, tmp_path / "out.mlpackage"],
        f"{model}: is a neuralNetwork model (specification version 4), not an ML program; "
        "mlopt rewrites ML programs only (iOS15+), there is nothing to do",
    )


def test_unsupported_opset(capsys, tmp_path, package):
    spec = Model_pb2.Model()
    spec.ParseFromString((package / MODEL).read_bytes())
    function = spec.mlProgram.functions["main"]
    function.block_specializations["CoreML99"].CopyFrom(function.block_specializations[function.opset])
    function.opset = "CoreML99"
    (package / MODEL).write_bytes(spec.SerializeToString())
    model = os.path.realpath(package / MODEL)
    assert_bad_input(
        capsys, tmp_path, [package, tmp_path / "out.mlpackage"], f"{model}: function 'main' uses opset 'CoreML99', which mlopt does not support"
    )


def test_existing_output_refused(capsys, tmp_path, package):
    out = tmp_path / "out.mlpackage"
    out.mkdir()
    (out / "keep").write_text("mine")
    assert_bad_input(capsys, tmp_path, [package, out], f"{out}: already exists (use --force to replace it)")


def test_in_place_needs_force(capsys, tmp_path, package):
    assert_bad_input(capsys, tmp_path, [package, package], f"{package}: is the input package (in-place needs --force)")


def test_no_output_path(capsys, tmp_path, package):
    assert_bad_input(capsys, tmp_path, [package], f"{package}: no output path given (mlopt optimize IN OUT, or --dry-run)")


def test_bad_input_from_the_console_script_has_no_traceback(tmp_path):
    import subprocess
    import sys

    missing = tmp_path / "nope.mlpackage"
    result = subprocess.run([sys.executable, "-m", "mlopt", "optimize", str(missing), str(tmp_path / "o")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == f"mlopt: error: {missing}: no such file or directory\n"
