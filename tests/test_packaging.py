"""The licence travels with the package: LICENSE at the root, and the wheel's METADATA names it (PEP 639)."""

import glob
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from conftest import ROOT


def test_license_file_is_bsd_3_clause():
    with open(os.path.join(ROOT, "LICENSE"), encoding="utf-8") as f:
        text = f.read()
    assert text.startswith("BSD 3-Clause License\n\nCopyright (c) 2026, The mlopt authors\n")
    assert "Neither the name of the copyright holder nor the names of its" in text


def test_wheel_metadata_carries_the_licence(tmp_path):
    """Built offline (no build isolation) from a copy of the source, so the checkout gets no build/ folder."""
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools.__version__} predates licence expressions (77)")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "LICENSE", "README.md"):
        shutil.copy(os.path.join(ROOT, name), src / name)
    shutil.copytree(os.path.join(ROOT, "mlopt"), src / "mlopt", ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(tmp_path / "dist")],
        cwd=src, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = glob.glob(str(tmp_path / "dist" / "mlopt-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        fields = [line for line in z.read(metadata).decode().splitlines() if line.startswith(("License-Expression:", "License-File:"))]
        assert fields == ["License-Expression: BSD-3-Clause", "License-File: LICENSE"]
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
        assert "mlopt/graph/op_signatures.json" in names  # the signature table every parse reads
