"""Copying without reading into memory: copy methods, fallbacks, hard links, and a measured peak RSS."""

import errno
import hashlib
import os
import shutil

import pytest

from conftest import cli_peak_rss_mb, fixture_path
from mlopt import optimize_package
from mlopt.package import copy as copy_module

WEIGHTS = os.path.join("Data", "com.apple.CoreML", "weights", "weight.bin")


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def _copy(tmp_path, src, **kwargs):
    """copy_into from an open `src` into tmp_path/b; returns the method."""
    fd, folder = os.open(src, os.O_RDONLY), os.open(tmp_path, os.O_RDONLY)
    try:
        return copy_module.copy_into(fd, folder, "b", **kwargs)
    finally:
        os.close(fd)
        os.close(folder)


def test_copy_file_range_used_on_linux(tmp_path):
    if not hasattr(os, "copy_file_range"):
        pytest.skip("no copy_file_range on this platform")
    src = tmp_path / "a"
    src.write_bytes(os.urandom(3_000_000))
    assert _copy(tmp_path, src) == "copy_file_range"
    assert (tmp_path / "b").read_bytes() == src.read_bytes()


def test_fallback_to_streamed_copy(tmp_path, monkeypatch):
    def refuse(*args):
        raise OSError(errno.EXDEV, "cross-device")

    monkeypatch.setattr(copy_module.os, "copy_file_range", refuse, raising=False)
    monkeypatch.setattr(copy_module.sys, "platform", "linux")
    src = tmp_path / "a"
    src.write_bytes(os.urandom(1_000_000))
    assert _copy(tmp_path, src) == "streamed copy"
    assert (tmp_path / "b").read_bytes() == src.read_bytes()


def test_copy_never_writes_through_an_existing_entry(tmp_path):
    """The target is created with O_EXCL | O_NOFOLLOW: a file or a link already there is an error, never written."""
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "b").symlink_to(victim)
    src = tmp_path / "a"
    src.write_bytes(b"new data")
    with pytest.raises(FileExistsError):
        _copy(tmp_path, src)
    assert victim.read_text() == "precious"


def test_link_across_file_systems_falls_back_to_a_copy(tmp_path, monkeypatch):
    def cross_device(*args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(copy_module.os, "link", cross_device)
    src = tmp_path / "a"
    src.write_bytes(os.urandom(100_000))
    folder = os.open(tmp_path, os.O_RDONLY)
    try:
        method = _copy(tmp_path, src, link_from=(folder, "a"))
    finally:
        os.close(folder)
    assert method == "copy_file_range (hard link impossible here: Invalid cross-device link)"
    assert (tmp_path / "b").read_bytes() == src.read_bytes()
    assert os.stat(tmp_path / "b").st_ino != os.stat(src).st_ino


def test_link_shares_the_weight_inode(tmp_path):
    out = tmp_path / "o.mlpackage"
    report = optimize_package(fixture_path("hf_fp16_ios17"), out, link=True)
    assert report.copy_method == "hard link"
    assert os.stat(out / WEIGHTS).st_ino == os.stat(os.path.join(fixture_path("hf_fp16_ios17"), WEIGHTS)).st_ino
    # the rewritten model file is a new file, not a link
    model = os.path.join("Data", "com.apple.CoreML", "model.mlmodel")
    assert os.stat(out / model).st_ino != os.stat(os.path.join(fixture_path("hf_fp16_ios17"), model)).st_ino


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM from /proc")
def test_weight_file_is_never_read_into_memory(tmp_path):
    """A package whose weight.bin carries 256 MB more (unreferenced, like a big model's other layers): the peak RSS
    of `mlopt optimize` stays far below the file size, and the copy is exact."""
    pkg = tmp_path / "big.mlpackage"
    shutil.copytree(fixture_path("decoder_fp16_ios17"), pkg)
    with open(pkg / WEIGHTS, "ab") as f:
        block = os.urandom(1 << 20)
        for _ in range(256):
            f.write(block)
    out = tmp_path / "out.mlpackage"
    code, stderr, peak_mb = cli_peak_rss_mb("optimize", pkg, out)
    assert code == 0, stderr
    assert peak_mb < 120, f"peak RSS {peak_mb:.0f} MB for a 256 MB weight file"
    assert sha256(out / WEIGHTS) == sha256(pkg / WEIGHTS)
