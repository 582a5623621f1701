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
    (["optimize", fixture_path("near_misses_fp16_ios17"), "--dry-run"], 0),
    (["optimize", fixture_path("hf_fp16_ios17"), "--dry-run", "--compute-units", "ALL"], 0),
    (["optimize", fixture_path("real/scalenorm_fp16_ios17"), "--dry-run"], 0),
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
            "passed": True, "checks": []}
    assert errors(good, SCHEMA) == []
    bad_check = {"function": "main", "output": "y", "max_abs": "inf", "max_rel": 0.0, "rtol": 0.0, "atol": 0.0, "passed": False,
                 "problem": None, "note": None}
    assert errors({**good, "checks": [bad_check]}, SCHEMA)
    assert errors({k: v for k, v in good.items() if k != "passed"}, SCHEMA)
    assert errors({**good, "command": "convert"}, SCHEMA)
