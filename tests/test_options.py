"""Command-line options beyond the basics: choosing chains and functions, verbosity through logging, batch
--skip-existing, and the small things a new user trips over."""

import json
import logging
import shutil

from conftest import fixture_path, op_types, run
from mlopt import optimize_package


def chain_statuses(report):
    return [(c.anchor, c.status, c.reason) for f in report.functions for c in f.chains]


def test_only_and_skip_choose_chains_by_anchor(tmp_path):
    only = optimize_package(fixture_path("decoder_fp16_ios17"), tmp_path / "a.mlpackage", only=["reduce_mean_2"])
    assert [a for a, s, _ in chain_statuses(only) if s == "rewritten"] == ["reduce_mean_2"]
    assert ("reduce_mean_0", "left alone", "not selected (--only)") in chain_statuses(only)
    assert op_types(str(tmp_path / "a.mlpackage")).count("layer_norm") == 1
    skip = optimize_package(fixture_path("decoder_fp16_ios17"), tmp_path / "b.mlpackage", skip=["reduce_mean_2", "reduce_mean_4"])
    assert [a for a, s, _ in chain_statuses(skip) if s == "left alone"] == ["reduce_mean_2", "reduce_mean_4"]
    assert ("reduce_mean_4", "left alone", "skipped (--skip)") in chain_statuses(skip)
    assert op_types(str(tmp_path / "b.mlpackage")).count("layer_norm") == 3


def test_function_selects_functions_of_a_multifunction_model(capsys):
    code, text, _ = run(capsys, "optimize", fixture_path("real/multifunction_fp16_ios18"), "--dry-run", "--json")
    names = [f["name"] for f in json.loads(text)["functions"]]
    code, text, err = run(capsys, "optimize", fixture_path("real/multifunction_fp16_ios18"), "--dry-run", "--json", "--function", names[0])
    functions = json.loads(text)["functions"]
    assert code == 0 and err == ""
    assert functions[0]["chains"] and all(c["status"] == "would rewrite" for c in functions[0]["chains"])
    for other in functions[1:]:
        assert other["note"] == "function not selected by --function" and other["chains"]
        assert all(c["status"] == "left alone" and c["reason"] == "not selected (--function)" for c in other["chains"])
        assert all(before == after for before, after in other["ops"].values())


def test_a_single_name_is_one_name_not_its_letters(tmp_path):
    report = optimize_package(fixture_path("decoder_fp16_ios17"), dry_run=True, only="reduce_mean_1")
    assert [a for a, s, _ in chain_statuses(report) if s == "would rewrite"] == ["reduce_mean_1"]
    report = optimize_package(fixture_path("decoder_fp16_ios17"), dry_run=True, skip="reduce_mean_1")
    assert [a for a, s, _ in chain_statuses(report) if s == "left alone"] == ["reduce_mean_1"]


def test_a_selection_name_that_matches_nothing_is_warned_about(capsys):
    code, text, err = run(capsys, "optimize", fixture_path("hf_fp16_ios17"), "--dry-run", "--skip", "reduce_mean_99")
    assert code == 0
    assert err == f"mlopt: warning: {fixture_path('hf_fp16_ios17')}: --skip reduce_mean_99 names no candidate chain of this model\n"


def test_an_opt_in_rule_named_without_its_option_says_which_option_runs_it(capsys):
    """`--only fp16_headroom` without `--headroom` used to say it "names no candidate chain of this model", which
    reads as "this model has no residual stream"."""
    path = fixture_path("gemma_postnorm_fp16_ios17", "headroom")
    code, _, err = run(capsys, "optimize", path, "--dry-run", "--only", "fp16_headroom")
    assert code == 0 and err == f"mlopt: warning: {path}: --only fp16_headroom: the rule runs only with --headroom\n"
    code, _, err = run(capsys, "optimize", path, "--dry-run", "--skip", "fp16_headroom")
    assert code == 0 and err == f"mlopt: warning: {path}: --skip fp16_headroom: the rule runs only with --headroom\n"
    code, _, err = run(capsys, "optimize", path, "--dry-run", "--headroom", "--only", "fp16_headroom")
    assert code == 0 and err == ""


def test_quiet_prints_nothing_on_success_and_verbose_adds_op_detail(capsys, tmp_path):
    code, text, err = run(capsys, "optimize", fixture_path("hf_fp16_ios17"), tmp_path / "q.mlpackage", "--quiet")
    assert (code, text, err) == (0, "", "")
    code, text, err = run(capsys, "optimize", fixture_path("hf_fp16_ios17"), tmp_path / "v.mlpackage", "--verbose")
    assert code == 0
    assert "                   ops: pow_0, reduce_mean_0, add_0, rsqrt_0, mul_0, mul_1" in text.splitlines()
    assert "                   replaced by: mul -> concat -> layer_norm -> slice_by_index -> mul" in text.splitlines()
    assert err.splitlines()[0].startswith("mlopt: debug: function main: rewritten reduce_mean_0: ")


def test_library_messages_go_through_logging(caplog, tmp_path):
    """A script routes mlopt's messages with the logging module; the library prints nothing itself."""
    with caplog.at_level(logging.DEBUG, logger="mlopt"):
        optimize_package(fixture_path("hf_fp16_ios17"), tmp_path / "plain_folder")
    messages = [(r.name, r.levelname, r.getMessage()) for r in caplog.records]
    assert ("mlopt", "WARNING", f"{tmp_path / 'plain_folder'}: the output's name does not end in .mlpackage; "
            "Core ML tools (Xcode, coremltools) expect it") in messages
    assert any(level == "DEBUG" and "rewritten reduce_mean_0" in text for _, level, text in messages)


def test_skip_existing_in_batch_mode(capsys, tmp_path):
    models = tmp_path / "models"
    for name in ("hf_fp16_ios17", "hf_fp32_ios15"):
        shutil.copytree(fixture_path(name), models / f"{name}.mlpackage")
    out = tmp_path / "out"
    (out / "hf_fp32_ios15.mlpackage").mkdir(parents=True)
    code, text, _ = run(capsys, "optimize", models, "--out-dir", out, "--skip-existing", "--json")
    result = json.loads(text)
    assert code == 0
    statuses = {m["input"].rsplit("/", 1)[-1]: (m["status"], m["error"]) for m in result["models"]}
    assert statuses["hf_fp32_ios15.mlpackage"] == ("skipped", f"{out / 'hf_fp32_ios15.mlpackage'} exists (--skip-existing)")
    assert statuses["hf_fp16_ios17.mlpackage"] == ("rewritten", None)
    assert list((out / "hf_fp32_ios15.mlpackage").iterdir()) == []  # untouched


def test_batch_summary_separates_rewritten_unchanged_and_bad(capsys, tmp_path):
    code, text, _ = run(
        capsys, "optimize", fixture_path("hf_fp16_ios17"), fixture_path("near_misses_fp16_ios17"),
        tmp_path / "missing.mlpackage", "--out-dir", tmp_path / "out",
    )
    assert code == 2
    assert text.splitlines()[-1] == "3 models: 1 rewritten, 1 unchanged, 1 bad input; 1 chain rewritten"


def test_options_that_only_make_sense_in_batch_mode(capsys, tmp_path):
    for flag in (["--jobs", "2"], ["--skip-existing"]):
        code, text, err = run(capsys, "optimize", fixture_path("hf_fp16_ios17"), tmp_path / "o.mlpackage", *flag)
        assert code == 2 and text == ""
        assert err.startswith(f"mlopt: error: {fixture_path('hf_fp16_ios17')}: {flag[0]} ")
    assert not (tmp_path / "o.mlpackage").exists()
