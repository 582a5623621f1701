"""Every `--json` output (optimize, dry run, inspect, batch, verify, errors) fits mlopt/report.schema.json."""

import json

import pytest

from conftest import fixture_path
from json_schema import SCHEMA, errors
from mlopt.cli import main



def json_of(capsys, *argv):
    code = main([str(a) for a in argv] + ["--json"])
    text = capsys.readouterr().out
    return code, json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


@pytest.mark.parametrize("argv, code", [
    (["optimize", fixture_path("decoder_fp16_ios17"), "OUT"], 0),
    (["optimize", fixture_path("headroom/llama_hot_fp16_ios17"), "OUT", "--headroom", "--audit"], 0),
    (["optimize", fixture_path("headroom/llama_prenorm_fp16_ios17"), "--dry-run", "--headroom"], 0),
    (["optimize", fixture_path("near_misses_fp16_ios17"), "--dry-run"], 0),
    (["optimize", fixture_path("hf_fp16_ios17"), "--dry-run", "--compute-units", "ALL"], 0),
    (["optimize", fixture_path("real/scalenorm_fp16_ios17"), "--dry-run"], 0),
    (["optimize", fixture_path("wide/llama_32000_fp16_ios17"), "OUT", "--split-outputs"], 0),
    (["optimize", fixture_path("wide/gpt2_50257_argmax_fp16_ios17"), "--dry-run", "--split-outputs"], 0),
    (["optimize", fixture_path("wide/llama_32000_fp16_ios17"), "--dry-run"], 0),
    (["inspect", fixture_path("gemma_casts_fp16_ios17")], 0),
    (["optimize", fixture_path("hf_fp16_ios17"), fixture_path("near_misses_fp16_ios17"), "--out-dir", "OUT"], 0),
    (["optimize", fixture_path("hf_fp16_ios17"), "/nonexistent/x.mlpackage", "--out-dir", "OUT"], 2),
    (["verify", fixture_path("hf_fp16_ios17"), fixture_path("hf_fp16_ios17")], 0),
    (["verify", fixture_path("hf_fp16_ios17"), fixture_path("textbook_eps_gamma_fp16_ios15")], 2),
    (["verify", fixture_path("decoder_fp16_ios17"), fixture_path("real/decoder_llama_fp16_ios17")], 2),
    (["optimize", "/nonexistent/x.mlpackage", "OUT"], 2),
    (["inspect", "/nonexistent/x.mlpackage"], 2),
    (["verify", fixture_path("hf_fp16_ios17"), "/nonexistent/x.mlpackage"], 2),
])
def test_every_json_output_fits_the_schema(capsys, tmp_path, argv, code):
    argv = [str(tmp_path / "out.mlpackage") if a == "OUT" else a for a in argv]
    got, doc = json_of(capsys, *argv)
    assert got == code
    assert errors(doc, SCHEMA) == []


def test_a_failed_command_prints_a_json_error_object(capsys):
    code, doc = json_of(capsys, "optimize", "/nonexistent/x.mlpackage", "/tmp/never.mlpackage")
    assert code == 2
    assert doc == {"schema": 1, "command": "optimize", "error": {
        "kind": "bad input", "path": "/nonexistent/x.mlpackage", "problem": "no such file or directory", "exit_code": 2,
    }}


def test_the_validator_rejects_what_does_not_fit():
    """The schema test can fail: an infinite error written as a string, a missing field, an unknown status."""
    good = {"schema": 1, "command": "verify", "reference": "a", "candidate": "b", "seed": 0, "scale": 1.0, "accumulate": "fp32", "notes": [],
            "float64_factor": 4.0, "passed": True, "checks": []}
    assert errors(good, SCHEMA) == []
    check = {"function": "main", "output": "y", "max_abs": 0.5, "max_rel": 0.0, "rtol": 0.0, "atol": 0.0, "passed": False,
             "problem": None, "note": None, "reference_error": 0.1, "candidate_error": 0.2, "passed_by": None}
    assert errors({**good, "checks": [check]}, SCHEMA) == []
    assert errors({**good, "checks": [{**check, "max_abs": "inf"}]}, SCHEMA)
    assert errors({**good, "checks": [{**check, "passed_by": "luck"}]}, SCHEMA)
    assert errors({**good, "checks": [{k: v for k, v in check.items() if k != "candidate_error"}]}, SCHEMA)
    assert errors({k: v for k, v in good.items() if k != "float64_factor"}, SCHEMA)
    assert errors({k: v for k, v in good.items() if k != "passed"}, SCHEMA)
    assert errors({**good, "command": "convert"}, SCHEMA)


def test_verify_json_carries_both_errors_against_float64(capsys, tmp_path):
    """A rewrite judged by float64 (scale 300: the reference overflows, its relative difference is inf) and a
    broken one: both fit the schema and carry the reference's and the candidate's errors."""
    from conftest import concat_without_negation
    from mlopt import optimize_package
    from mlopt.rules.rms_norm import RMSNormRule

    out = tmp_path / "o.mlpackage"
    optimize_package(fixture_path("hf_fp16_ios17"), out)
    code, doc = json_of(capsys, "verify", fixture_path("hf_fp16_ios17"), str(out), "--scale", "300")
    assert code == 0 and errors(doc, SCHEMA) == [] and doc["float64_factor"] == 4.0
    (check,) = doc["checks"]
    assert check["passed_by"] == "float64" and check["max_rel"] is None and check["max_rel_nonfinite"] == "inf"
    assert check["reference_error"] == 1.0 and 0 < check["candidate_error"] < 1e-3

    broken = tmp_path / "broken.mlpackage"
    original = RMSNormRule.lower
    RMSNormRule.lower = concat_without_negation
    try:
        optimize_package(fixture_path("hf_fp32_ios15"), broken, verify=False)
    finally:
        RMSNormRule.lower = original
    code, doc = json_of(capsys, "verify", fixture_path("hf_fp32_ios15"), str(broken))
    assert code == 1 and errors(doc, SCHEMA) == []
    (check,) = doc["checks"]
    assert check["passed_by"] is None and check["candidate_error"] > 100 * check["reference_error"]
