"""The same input and options give byte-identical packages: in one process, and across processes whose string
hashes differ (PYTHONHASHSEED), which is where an unordered map or set would show. The model file is serialised
deterministically (protobuf map fields such as the user metadata in key order); every other file is copied."""

import os
import subprocess
import sys

import pytest

from conftest import FIXTURES, ROOT
from mlopt import optimize_package

# several rewrites, a multifunction model, a stateful one, a nested block, converters' metadata maps
NAMES = ["real/llama_fp16_ios17", "real/multifunction_fp16_ios18", "real/stateful_fp16_ios18", "cond_branch_fp32_ios17",
         "layernorm/bert_mixed_ios17", "bias_only/ane_bias_only_fp16_ios15"]


def files(package):
    """Every file of the package: relative path -> bytes."""
    found = {}
    for root, dirs, names in os.walk(package):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, package)] = f.read()
    return found


def src(name):
    return os.path.join(FIXTURES, f"{name}.mlpackage")


@pytest.mark.parametrize("name", NAMES)
def test_two_runs_in_one_process_write_the_same_bytes(name, tmp_path):
    first, second = str(tmp_path / "a.mlpackage"), str(tmp_path / "b.mlpackage")
    assert optimize_package(src(name), first).rewrites > 0
    optimize_package(src(name), second)
    assert files(first) == files(second)


@pytest.mark.parametrize("name", ["real/llama_fp16_ios17", "real/multifunction_fp16_ios18"])
def test_runs_in_processes_with_different_hash_seeds_write_the_same_bytes(name, tmp_path):
    outs = []
    for seed in ("1", "2", "3"):
        out = str(tmp_path / f"seed{seed}.mlpackage")
        env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=ROOT)
        result = subprocess.run([sys.executable, "-m", "mlopt", "optimize", "-q", src(name), out], env=env, capture_output=True, text=True)
        assert (result.returncode, result.stderr) == (0, "")
        outs.append(files(out))
    assert outs[0] == outs[1] == outs[2]
    model = next(v for k, v in outs[0].items() if k.endswith("model.mlmodel"))
    assert b"com.github.mlopt.version" in model  # the metadata map whose order used to vary from run to run
