"""The examples run and show what they claim."""

import os
import subprocess
import sys

import pytest

from conftest import ROOT


def run_example(name, *args):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "examples", name), *args], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.splitlines()


def test_compute_units_example():
    lines = run_example("compute_units.py")
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == {"ALL", "CPU_AND_GPU", "CPU_ONLY", "CPU_AND_NE"}
    assert "mul -> concat -> layer_norm -> slice_by_index -> mul" in rows["CPU_AND_NE"] and rows["CPU_AND_NE"].endswith("1 chain(s) rewritten")
    for units in ("ALL", "CPU_AND_GPU", "CPU_ONLY"):
        assert "pow -> reduce_mean -> add -> rsqrt -> mul -> mul" in rows[units] and rows[units].endswith("0 chain(s) rewritten")


def test_torch_example(tmp_path):
    pytest.importorskip("torch")
    lines = run_example("torch_to_coreml.py", str(tmp_path / "block.mlpackage"))
    assert lines[0] == "layer_norm ops: 2, reduce_mean ops: 0"
    assert "  all outputs agree" in lines
