"""Batch post-processing: folders, one bad model among good ones, --jobs, JSON, interrupts."""

import json
import os
import shutil

import pytest

from conftest import fixture_path, op_types, run, tree_digest
from mlopt import batch

GOOD = ["hf_fp16_ios17", "decoder_fp16_ios17", "near_misses_fp16_ios17", "gemma_casts_fp16_ios17"]


@pytest.fixture
def models(tmp_path):
    """models/ with packages at two depths and one corrupt package among them."""
    root = tmp_path / "models"
    (root / "team" / "v2").mkdir(parents=True)
    shutil.copytree(fixture_path(GOOD[0]), root / f"{GOOD[0]}.mlpackage")
    shutil.copytree(fixture_path(GOOD[1]), root / "team" / f"{GOOD[1]}.mlpackage")
    shutil.copytree(fixture_path(GOOD[2]), root / "team" / "v2" / f"{GOOD[2]}.mlpackage")
    shutil.copytree(fixture_path(GOOD[3]), root / "team" / "v2" / f"{GOOD[3]}.mlpackage")
    corrupt = root / "team" / "broken.mlpackage"
    shutil.copytree(fixture_path("hf_fp32_ios15"), corrupt)
    (corrupt / "Data" / "com.apple.CoreML" / "model.mlmodel").write_bytes(b"\x0a\xff\xff garbage")
    return root


def test_folder_with_one_corrupt_model(models, tmp_path, capsys):
    out = tmp_path / "out"
    code, text, err = run(capsys, "optimize", models, "--out-dir", out)
    assert code == 2  # a bad input among the models
    rows = text.splitlines()
    assert rows[0].split() == ["model", "rewritten", "left", "alone", "time", "status"]
    by_model = {r.split()[0]: r.split() for r in rows[1:-1]}
    assert by_model[str(models / "hf_fp16_ios17.mlpackage")][1:3] == ["1", "0"]
    assert by_model[str(models / "team" / "decoder_fp16_ios17.mlpackage")][1:3] == ["5", "0"]
    assert by_model[str(models / "team" / "v2" / "near_misses_fp16_ios17.mlpackage")][1:3] == ["0", "7"]
    broken = by_model[str(models / "team" / "broken.mlpackage")]
    assert broken[4:7] == ["bad", "input:", f"{os.path.realpath(models / 'team' / 'broken.mlpackage' / 'Data' / 'com.apple.CoreML' / 'model.mlmodel')}:"]
    assert rows[-1] == "5 models: 3 rewritten, 1 unchanged, 1 bad input; 7 chains rewritten"
    # one progress line per model on a non-terminal, the layout mirrored, the bad one not written
    assert len(err.splitlines()) == 5 and all(line.startswith("[") for line in err.splitlines())
    assert "layer_norm" in op_types(str(out / "team" / "decoder_fp16_ios17.mlpackage"))
    assert (out / "team" / "v2" / "gemma_casts_fp16_ios17.mlpackage").is_dir()
    assert not (out / "team" / "broken.mlpackage").exists()


def test_jobs_2_gives_the_same_outputs_as_jobs_1(models, tmp_path, capsys):
    code_one, _, err_one = run(capsys, "optimize", models, "--out-dir", tmp_path / "one", "--jobs", "1")
    code_two, _, err_two = run(capsys, "optimize", models, "--out-dir", tmp_path / "two", "--jobs", "2")
    # one bad model in the set: both exit 2; a worker lost with --jobs 2 would say so here, not as a missing output
    assert (code_one, code_two) == (2, 2), err_two
    assert err_two.count(": bad input (") == err_one.count(": bad input (") == 1, err_two
    one = sorted(str(p.relative_to(tmp_path / "one")) for p in (tmp_path / "one").rglob("*.mlpackage"))
    two = sorted(str(p.relative_to(tmp_path / "two")) for p in (tmp_path / "two").rglob("*.mlpackage"))
    assert one == two and len(one) == 4
    for rel in one:
        assert tree_digest(tmp_path / "one" / rel) == tree_digest(tmp_path / "two" / rel), rel


def test_batch_json(models, tmp_path, capsys):
    code, text, _ = run(capsys, "optimize", models, "--out-dir", tmp_path / "out", "--json")
    result = json.loads(text)
    assert code == 2 and result["schema"] == 1
    assert result["counts"] == {"rewritten": 3, "unchanged": 1, "skipped": 0, "bad input": 1, "failed": 0, "interrupted": 0}
    statuses = {os.path.basename(m["input"]): m["status"] for m in result["models"]}
    assert statuses["broken.mlpackage"] == "bad input"
    decoder = next(m for m in result["models"] if m["input"].endswith("decoder_fp16_ios17.mlpackage"))
    assert decoder["report"]["rewrites"] == 5 and decoder["output"].endswith(os.path.join("team", "decoder_fp16_ios17.mlpackage"))


def test_explicit_packages_and_name_collisions(tmp_path, capsys):
    other = tmp_path / "elsewhere"
    shutil.copytree(fixture_path("hf_fp16_ios17"), other / "hf_fp16_ios17.mlpackage")
    code, text, _ = run(
        capsys, "optimize", fixture_path("hf_fp16_ios17"), other / "hf_fp16_ios17.mlpackage", fixture_path("decoder_fp16_ios17"),
        tmp_path / "missing.mlpackage", "--out-dir", tmp_path / "out",
    )
    assert code == 2
    assert sorted(os.listdir(tmp_path / "out")) == ["decoder_fp16_ios17.mlpackage", "hf_fp16_ios17.mlpackage"]
    assert f"output {tmp_path / 'out' / 'hf_fp16_ios17.mlpackage'} would also be written by {fixture_path('hf_fp16_ios17')}" in text
    assert f"{tmp_path / 'missing.mlpackage'}: no such file or directory" in text


def test_several_inputs_need_out_dir(capsys, tmp_path):
    code, out, err = run(capsys, "optimize", fixture_path("hf_fp16_ios17"), fixture_path("hf_fp32_ios15"), tmp_path / "o")
    assert code == 2 and out == ""
    assert err == f"mlopt: error: {fixture_path('hf_fp16_ios17')}: 3 paths given: several inputs need --out-dir DIR\n"


@pytest.mark.parametrize("jobs", [1, 2])
def test_interrupt_leaves_no_partial_packages(models, tmp_path, monkeypatch, jobs):
    """Ctrl-C after the first model: finished packages stay complete, nothing half-written, no temporary folders."""
    items = batch.plan([models], tmp_path / "out")
    seen = []

    def interrupt_after_first(item):
        seen.append(item)
        if len([i for i in seen if i.status in ("rewritten", "unchanged")]) == 1:
            raise KeyboardInterrupt

    result = batch.run(items, jobs=jobs, progress=interrupt_after_first)
    assert result.exit_code == 130 and result.interrupted
    # with jobs=2, work already handed to the worker may finish meanwhile; it is then reported as it ended
    assert jobs == 2 or any(i.status == "interrupted" for i in result.items)
    for item in result.items:
        assert (item.status in ("rewritten", "unchanged")) == os.path.isdir(item.output or ""), item
    written = [p for p in (tmp_path / "out").rglob("*") if p.name.endswith(".mlpackage")]
    assert written
    for path in written:
        assert op_types(str(path))  # loads: complete
    leftovers = [p for p in (tmp_path / "out").rglob("*") if ".mlopt-" in p.name]
    assert leftovers == []


def test_find_packages_does_not_descend_into_packages(models):
    (models / "team" / "linked").symlink_to(models / "team" / "v2")
    found, links = batch.find_packages(str(models))
    assert links == [str(models / "team" / "linked")]
    assert [os.path.relpath(p, models) for p in found] == [
        "hf_fp16_ios17.mlpackage",
        os.path.join("team", "broken.mlpackage"),
        os.path.join("team", "decoder_fp16_ios17.mlpackage"),
        os.path.join("team", "v2", "gemma_casts_fp16_ios17.mlpackage"),
        os.path.join("team", "v2", "near_misses_fp16_ios17.mlpackage"),
    ]


def test_interrupt_during_a_model_stops_the_batch(models, tmp_path, monkeypatch):
    """Ctrl-C while the second model is being written: that model leaves nothing, the batch stops there."""
    from mlopt.package import writer

    real_copy = writer.PackageWriter._copy

    def copy_then_interrupt(self, rel):
        if "decoder" in self.package.path:
            raise KeyboardInterrupt
        return real_copy(self, rel)

    monkeypatch.setattr(writer.PackageWriter, "_copy", copy_then_interrupt)
    result = batch.run(batch.plan([models], tmp_path / "out"), jobs=1)
    assert result.exit_code == 130
    statuses = [(os.path.basename(i.input), i.status) for i in result.items]
    assert statuses == [
        ("hf_fp16_ios17.mlpackage", "rewritten"),
        ("broken.mlpackage", "bad input"),
        ("decoder_fp16_ios17.mlpackage", "interrupted"),
        ("gemma_casts_fp16_ios17.mlpackage", "interrupted"),
        ("near_misses_fp16_ios17.mlpackage", "interrupted"),
    ]
    assert sorted(p.name for p in (tmp_path / "out").rglob("*.mlpackage")) == ["hf_fp16_ios17.mlpackage"]
    assert [p for p in (tmp_path / "out").rglob("*") if ".mlopt-" in p.name] == []
    # the model that was cut short and the ones that never started say which they are
    statuses = {os.path.basename(i.input): i.status + ": " + i.error for i in result.items if i.status == "interrupted"}
    assert statuses == {
        "decoder_fp16_ios17.mlpackage": "interrupted: stopped while being optimized; nothing was written",
        "gemma_casts_fp16_ios17.mlpackage": "interrupted: the batch stopped before this model started; nothing was written",
        "near_misses_fp16_ios17.mlpackage": "interrupted: the batch stopped before this model started; nothing was written",
    }
    assert "interrupted: the batch stopped before this model started; nothing was written" in result.render().splitlines()[-2]
