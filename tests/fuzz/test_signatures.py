"""Programs that break an op's signature (graph/signatures.py): every command refuses them alike.

Every command checks every op of the program it reads against coremltools' op registry for its opset
(graph/validate.py) before it acts: `optimize` and `inspect` through the API, `verify`, `audit` and `lint`
through analyses/source.py. So the same malformed program gives exit 2 and
one identical line from each: the file, the function, the op and what is wrong.
"""

import os
import re

import pytest

from mlopt.cli import main
from mlopt.package.proto import Model_pb2

from .cases import copy_fixture
from .mutators import MODEL
from .programs import SIGNATURE_MUTATIONS, applies, mutate_program
from .runner import Child

FIXTURES = ["hf_fp16_ios15", "hf_fp32_ios17", "cond_branch_fp32_ios17", "recip_sqrt_fp16_ios18", "real.stateful_fp16_ios18"]
PROBLEMS = {  # what the line says after "function 'NAME': op 'OP' (TYPE) "
    "input-missing-required": r"lacks its required input '\w+'",
    "op-unknown-type": r"has an unknown op type 'fuzz_unknown_op'",
    "op-from-later-opset": r"is not an op of opset CoreML\d \(iOS\d+\); it needs CoreML\d \(iOS\d+\) or later",
    "input-wrong-dtype": r"input '\w+' is string; \w+ takes [\w ]+ there",
}
CASES = [(m, f) for m in SIGNATURE_MUTATIONS for f in FIXTURES]


def _broken(tmp_path, mutation, fixture):
    with open(os.path.join(copy_fixture(fixture, tmp_path / "probe.mlpackage"), MODEL), "rb") as f:
        if not applies(f.read(), mutation, 0):
            pytest.skip(f"{fixture} has nothing {mutation} can break")
    package = copy_fixture(fixture, tmp_path / "bad.mlpackage")
    mutate_program(package, mutation, seed=0)
    return package


def _commands(package, tmp_path):
    return {
        "optimize": ["optimize", package, str(tmp_path / "out.mlpackage")],
        "inspect": ["inspect", package],
        "verify": ["verify", package, package],
        "audit": ["audit", package],
        "lint": ["lint", package],
    }


@pytest.mark.parametrize("mutation,fixture", CASES, ids=[f"{m}-{f}" for m, f in CASES])
def test_same_exit_and_line_from_every_command(mutation, fixture, tmp_path, capsys):
    package = _broken(tmp_path, mutation, fixture)
    lines = {}
    for command, argv in _commands(package, tmp_path).items():
        code = main(argv)
        err = capsys.readouterr().err.splitlines()
        assert (code, len(err)) == (2, 1), (command, code, err)
        lines[command] = err[0]
    assert len(set(lines.values())) == 1, lines
    model = re.escape(os.path.join(package, MODEL))
    assert re.fullmatch(rf"mlopt: error: {model}: function '\w+': op '[^']+' \(\w+\) {PROBLEMS[mutation]}", lines["inspect"]), lines
    assert not os.path.exists(tmp_path / "out.mlpackage")


def test_rsqrt_without_x_in_child_processes(tmp_path):
    """The case that started it: an `rsqrt` without its required `x` (optimize and inspect exited 0, verify 3)."""
    package = copy_fixture("hf_fp16_ios17", tmp_path / "bad.mlpackage")
    spec = Model_pb2.Model()
    with open(os.path.join(package, MODEL), "rb") as f:
        spec.ParseFromString(f.read())
    main_fn = spec.mlProgram.functions["main"]
    (rsqrt,) = [op for op in main_fn.block_specializations[main_fn.opset].operations if op.type == "rsqrt"]
    name = rsqrt.outputs[0].name
    del rsqrt.inputs["x"]
    with open(os.path.join(package, MODEL), "wb") as f:
        f.write(spec.SerializeToString())
    expected = f"mlopt: error: {os.path.join(package, MODEL)}: function 'main': op '{name}' (rsqrt) lacks its required input 'x'"
    for command, argv in _commands(package, tmp_path).items():
        result = Child(argv).wait()
        assert (command, result.code, result.stderr.splitlines()) == (command, 2, [expected])
