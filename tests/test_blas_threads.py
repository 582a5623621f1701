"""The `mlopt` command runs numpy's BLAS on one thread unless the user chose a number (mlopt/cli/blas_threads.py);
code calling `main(argv)` keeps its environment."""

import json
import os
import subprocess
import sys

import pytest

from conftest import fixture_path
from mlopt.cli import main

# The command as `mlopt ARGS` runs it (main() reads sys.argv), then what the environment and the process hold.
NAMES = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "OMP_NUM_THREADS")
PROBE = """import ctypes, json, os, sys
sys.argv = ["mlopt", *sys.argv[1:]]
from mlopt.cli import main
rc = main()
blas = None  # the thread count of the OpenBLAS numpy loaded (Linux wheels), asked through its own API
maps = open("/proc/self/maps").read().split() if os.path.exists("/proc/self/maps") else []
path = next((p for p in maps if "openblas" in os.path.basename(p).lower()), None)
if path is not None:
    lib = ctypes.CDLL(path)
    get = next((getattr(lib, n) for n in ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_",
                                          "openblas_get_num_threads") if hasattr(lib, n)), None)
    blas = get() if get is not None else None
seen = {"env": [os.environ.get(n) for n in %r], "numpy": "numpy" in sys.modules, "blas": blas}
print("SEEN", json.dumps(seen), file=sys.stderr)
sys.exit(rc)
""" % (NAMES,)


def command(tmp_path, **env):
    """Run `mlopt optimize` on a fixture as a command, with `env` as the only thread counts set; returns what it
    saw at the end: {"env": values of NAMES, "numpy": imported, "blas": OpenBLAS's thread count (None: no OpenBLAS)}."""
    environment = {k: v for k, v in os.environ.items() if k not in NAMES}
    environment.update(env)
    result = subprocess.run([sys.executable, "-c", PROBE, "optimize", "-q", fixture_path("decoder_fp16_ios17"), str(tmp_path / "o.mlpackage")],
                            capture_output=True, text=True, env=environment)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stderr.split("SEEN ", 1)[1])


def test_the_command_runs_blas_on_one_thread(tmp_path):
    seen = command(tmp_path)
    assert seen["env"] == ["1", "1", "1", None] and seen["numpy"]  # set before numpy was imported, which read it
    if seen["blas"] is not None:  # numpy's OpenBLAS read it: one thread
        assert seen["blas"] == 1


@pytest.mark.parametrize("name", NAMES)
def test_a_thread_count_the_user_chose_is_kept(tmp_path, name):
    seen = command(tmp_path, **{name: "2"})
    assert seen["env"] == [("2" if n == name else None) for n in NAMES]
    if seen["blas"] is not None and name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS") and (os.cpu_count() or 1) >= 2:
        assert seen["blas"] == 2  # both are OpenBLAS's (it never runs more threads than cores)


def test_main_called_with_arguments_leaves_the_environment_alone(tmp_path, monkeypatch):
    for name in NAMES:
        monkeypatch.delenv(name, raising=False)
    before = dict(os.environ)
    assert main(["optimize", "-q", fixture_path("decoder_fp16_ios17"), str(tmp_path / "o.mlpackage")]) == 0
    assert dict(os.environ) == before
