"""Writing packages: atomic output, --force, in-place, byte-identical copies, failures leave nothing behind."""

import os

import pytest

from conftest import file_digest, fixture_path, op_types, tree_digest
from mlopt import optimize_package
from mlopt.errors import OutputError
from mlopt.cli import main
from mlopt.package import writer

MODEL = os.path.join("Data", "com.apple.CoreML", "model.mlmodel")


def test_input_never_modified(tmp_path):
    before = tree_digest(fixture_path("decoder_fp16_ios17"))
    optimize_package(fixture_path("decoder_fp16_ios17"), tmp_path / "out.mlpackage")
    assert tree_digest(fixture_path("decoder_fp16_ios17")) == before


def test_every_other_file_copied_byte_for_byte(tmp_path):
    src = fixture_path("decoder_fp16_ios17")
    out = tmp_path / "out.mlpackage"
    optimize_package(src, out)
    src_files = sorted(os.path.relpath(os.path.join(r, f), src) for r, _, fs in os.walk(src) for f in fs)
    out_files = sorted(os.path.relpath(os.path.join(r, f), out) for r, _, fs in os.walk(out) for f in fs)
    assert src_files == out_files
    for rel in src_files:
        if rel != MODEL:
            assert file_digest(os.path.join(out, rel)) == file_digest(os.path.join(src, rel)), rel


def test_unchanged_model_file_is_copied_not_reserialised(tmp_path):
    out = tmp_path / "out.mlpackage"
    report = optimize_package(fixture_path("hf_fp16_ios17"), out, compute_units="CPU_ONLY")
    assert report.rewrites == 0 and report.written
    assert tree_digest(out) == tree_digest(fixture_path("hf_fp16_ios17"))


def test_force_replaces_existing_output(tmp_path):
    out = tmp_path / "out.mlpackage"
    out.mkdir()
    (out / "Manifest.json").write_text("{}")  # a package (a folder with a Manifest), however broken
    (out / "stale").write_text("old")
    optimize_package(fixture_path("hf_fp16_ios17"), out, force=True)
    assert not (out / "stale").exists()
    assert "layer_norm" in op_types(str(out))
    assert sorted(os.listdir(tmp_path)) == ["out.mlpackage"]


def test_force_refuses_to_replace_a_file(tmp_path):
    out = tmp_path / "out.mlpackage"
    out.write_text("a file")
    with pytest.raises(Exception, match="exists and is not a folder"):
        optimize_package(fixture_path("hf_fp16_ios17"), out, force=True)
    assert out.read_text() == "a file"


def test_in_place_with_force_is_atomic(tmp_path):
    import shutil

    pkg = tmp_path / "model.mlpackage"
    shutil.copytree(fixture_path("hf_fp16_ios17"), pkg)
    report = optimize_package(pkg, pkg, force=True)
    assert report.rewrites == 1
    assert "layer_norm" in op_types(str(pkg))
    assert sorted(os.listdir(tmp_path)) == ["model.mlpackage"]


def test_creates_missing_output_parents(tmp_path):
    out = tmp_path / "a" / "b" / "out.mlpackage"
    optimize_package(fixture_path("hf_fp16_ios17"), out)
    assert "layer_norm" in op_types(str(out))


@pytest.mark.parametrize("error, code", [(OSError(28, "No space left on device"), 1), (KeyboardInterrupt(), 130)])
def test_failure_mid_write_leaves_nothing(tmp_path, monkeypatch, capsys, error, code):
    """A copy that dies half way (disk full, Ctrl-C) leaves no output, no temporary folder and no created parent."""
    real_copy = writer.copy_into
    copied = []

    def failing_copy(*args, **kwargs):
        if copied:
            raise error
        copied.append(args)
        return real_copy(*args, **kwargs)

    monkeypatch.setattr(writer, "copy_into", failing_copy)
    out = tmp_path / "new" / "folders" / "out.mlpackage"
    assert main(["optimize", fixture_path("decoder_fp16_ios17"), str(out)]) == code
    assert copied  # the copy really started
    assert os.listdir(tmp_path) == []
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    if code == 1:
        assert err == f"mlopt: error: {out}: could not be written (No space left on device); nothing was written\n"


def test_failure_mid_replace_keeps_the_old_output(tmp_path, monkeypatch):
    from mlopt.package import claim

    out = tmp_path / "out.mlpackage"
    optimize_package(fixture_path("hf_fp16_ios17"), out, compute_units="CPU_ONLY")
    before = tree_digest(out)

    def failing_swap(*args, **kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(claim, "swap", failing_swap)
    with pytest.raises(OutputError, match="could not be written"):
        optimize_package(fixture_path("hf_fp16_ios17"), out, force=True)
    assert tree_digest(out) == before
    assert sorted(os.listdir(tmp_path)) == ["out.mlpackage"]


def test_description_and_unknown_fields_survive(tmp_path):
    """Fields this protobuf schema does not know (a newer Core ML's) and the whole description come through."""
    import shutil

    from mlopt.package import read_package

    pkg = tmp_path / "in.mlpackage"
    shutil.copytree(fixture_path("hf_fp16_ios17"), pkg)
    unknown = bytes([0xC0, 0x3E, 0x2A])  # field 1000, varint 42: not in Model.proto
    with open(pkg / MODEL, "ab") as f:
        f.write(unknown)
    out = tmp_path / "out.mlpackage"
    assert optimize_package(pkg, out).rewrites == 1
    data = (out / MODEL).read_bytes()
    assert data.endswith(unknown)
    before, after = read_package(pkg).spec, read_package(out).spec
    for field in ("input", "output", "predictedFeatureName", "predictedProbabilitiesName"):
        assert getattr(after.description, field) == getattr(before.description, field)
    assert after.description.metadata.shortDescription == before.description.metadata.shortDescription
    for key, value in before.description.metadata.userDefined.items():
        assert after.description.metadata.userDefined[key] == value
    assert after.specificationVersion == before.specificationVersion
