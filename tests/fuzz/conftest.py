"""Fast or full fuzz set, case parametrisation, and the large package the signal cases interrupt.

`--fuzz=full` only exists when pytest loads this file at start-up, i.e. when tests/fuzz is named on the command
line (pytest takes `pytest_addoption` from initial conftests only); `MLOPT_FUZZ=full` works however pytest is run.
"""

import os
import shutil

import pytest

from . import runner
from .cases import copy_fixture
from .mutators import WEIGHTS

BIG_EXTRA_BYTES = 200 << 20  # unreferenced bytes appended to weight.bin, so that copying the package takes a while


def pytest_addoption(parser):
    parser.addoption("--fuzz", choices=("fast", "full"), default=None, help="fuzz set to run (default: fast; env MLOPT_FUZZ)")


def fuzz_full(config):
    return (config.getoption("fuzz", None) or os.environ.get("MLOPT_FUZZ") or "fast") == "full"


def pytest_configure(config):
    runner.TIMEOUT = 30.0 if fuzz_full(config) else 15.0  # a hang costs the fast set 15 s, not 30


def pytest_generate_tests(metafunc):
    generator = getattr(metafunc.function, "fuzz_cases", None)
    if generator is not None:
        cases = generator(fuzz_full(metafunc.config))
        metafunc.parametrize("case", cases, ids=[c.id for c in cases])


@pytest.fixture(scope="session")
def big_package(tmp_path_factory):
    """fixtures/decoder_fp16_ios17 with 200 MB of unreferenced bytes after its weights (built once, never written)."""
    path = copy_fixture("decoder_fp16_ios17", tmp_path_factory.mktemp("big") / "big.mlpackage")
    block = os.urandom(1 << 20)
    with open(os.path.join(path, WEIGHTS), "ab") as f:
        for _ in range(BIG_EXTRA_BYTES // len(block)):
            f.write(block)
    yield path
    shutil.rmtree(path, ignore_errors=True)
