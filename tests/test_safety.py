"""File-system safety: each rule of docs/safety.md, attacked the way a tester would.

Every test builds its layout in tmp_path from a fixture copy, runs mlopt, and checks that nothing outside what
mlopt created changed: the input tree (links included), files beside it, files links point to.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest

from conftest import fixture_path, op_types, run as cli
from fuzz.runner import Child
from mlopt.package import staging as staging_module
from mlopt.package import writer as writer_module

MODEL = os.path.join("Data", "com.apple.CoreML", "model.mlmodel")
WEIGHTS = os.path.join("Data", "com.apple.CoreML", "weights", "weight.bin")


def snapshot(root):
    """{relative path: bytes, link target or kind} of everything under `root`, links and special files not followed."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            if os.path.islink(path):
                found[rel] = ("link", os.readlink(path))
            elif os.path.isfile(path) and not os.path.islink(path) and (st.st_mode & 0o170000) == 0o100000:
                with open(path, "rb") as f:
                    found[rel] = ("file", f.read())
            elif os.path.isdir(path):
                found[rel] = ("dir",)
            else:
                found[rel] = ("special", st.st_mode & 0o170000)
    return found


def copy_fixture(dst, name="hf_fp16_ios17"):
    shutil.copytree(fixture_path(name), dst)
    return dst


def differing_copy(pkg, tmp_path):
    """A copy of `pkg` whose weight file differs in its last byte: `verify` must run it (an identical package is
    equal without running)."""
    copy = tmp_path / "differing.mlpackage"
    shutil.copytree(pkg, copy)
    weights = copy / WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    return copy


def set_weight_file_name(pkg, name):
    """Point the first weight of `pkg` (an iOS17 fixture copy) at the weight file `name`."""
    from mlopt.package.proto import Model_pb2

    spec = Model_pb2.Model()
    spec.ParseFromString((pkg / MODEL).read_bytes())
    block = spec.mlProgram.functions["main"].block_specializations["CoreML7"]
    blob = next(op for op in block.operations if op.attributes["val"].WhichOneof("value") == "blobFileValue")
    blob.attributes["val"].blobFileValue.fileName = name
    (pkg / MODEL).write_bytes(spec.SerializeToString())


def leftovers(root):
    return [p for p in root.rglob("*") if ".mlopt-" in p.name]


# -- inputs reached through links are never written ------------------------------------------------------------
def test_input_through_a_symlinked_parent_is_untouched(tmp_path, capsys):
    copy_fixture(tmp_path / "real" / "a.mlpackage")
    (tmp_path / "link").symlink_to("real")
    before = snapshot(tmp_path / "real" / "a.mlpackage")
    code, out, err = cli(capsys, "optimize", tmp_path / "link" / "a.mlpackage", tmp_path / "link" / "b.mlpackage")
    assert code == 0, err
    assert snapshot(tmp_path / "real" / "a.mlpackage") == before
    assert "layer_norm" in op_types(str(tmp_path / "real" / "b.mlpackage"))


@pytest.mark.parametrize("extra", [[], ["--link"], ["--compute-units", "ALL"]])
def test_input_that_is_a_symlink_beside_out_is_untouched(tmp_path, capsys, extra):
    copy_fixture(tmp_path / "real.mlpackage")
    (tmp_path / "in.mlpackage").symlink_to("real.mlpackage")
    before = snapshot(tmp_path / "real.mlpackage")
    code, out, err = cli(capsys, "optimize", tmp_path / "in.mlpackage", tmp_path / "out.mlpackage", *extra)
    assert code == 0, err
    assert snapshot(tmp_path / "real.mlpackage") == before
    assert os.path.islink(tmp_path / "in.mlpackage")
    assert op_types(str(tmp_path / "out.mlpackage"))


def test_in_place_through_a_symlink_is_refused(tmp_path, capsys):
    copy_fixture(tmp_path / "real.mlpackage")
    (tmp_path / "in.mlpackage").symlink_to("real.mlpackage")
    before = snapshot(tmp_path)
    link = tmp_path / "in.mlpackage"
    code, out, err = cli(capsys, "optimize", link, link, "--force")
    assert code == 2
    assert err == f"mlopt: error: {link}: is a symbolic link; --force replaces only an .mlpackage folder, never a link (name the package itself)\n"
    assert snapshot(tmp_path) == before


def test_links_inside_the_package_are_refused_and_never_followed(tmp_path, capsys):
    pkg = copy_fixture(tmp_path / "in.mlpackage")
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.move(str(pkg / "Data"), str(outside / "Data"))
    (pkg / "Data").symlink_to(outside / "Data")
    before = snapshot(tmp_path)
    code, out, err = cli(capsys, "optimize", pkg, tmp_path / "out.mlpackage")
    assert code == 2
    assert err == (
        f"mlopt: error: {pkg / 'Data'}: is a symbolic link (to {outside / 'Data'}); mlopt follows no link inside a "
        "package, so nothing outside it is read (resolve links first, e.g. cp -RL)\n"
    )
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("target", ["/etc/passwd", "big", "Data/com.apple.CoreML/model.mlmodel", "missing", "loop"])
def test_any_link_in_the_package_is_refused_before_copying(tmp_path, capsys, target):
    """Links out (to /etc/passwd, to a large file), links that stay inside, dangling links, link loops."""
    pkg = copy_fixture(tmp_path / "in.mlpackage")
    (tmp_path / "big").write_bytes(b"x" * 1_000_000)
    link = pkg / "Data" / "extra"
    link.symlink_to({"big": str(tmp_path / "big"), "missing": str(tmp_path / "missing"), "loop": str(link)}.get(target, target))
    code, out, err = cli(capsys, "optimize", pkg, tmp_path / "out.mlpackage")
    assert code == 2
    assert err.startswith(f"mlopt: error: {link}: is a symbolic link (to ") and err.count("\n") == 1
    assert not (tmp_path / "out.mlpackage").exists() and leftovers(tmp_path) == []


def test_a_weight_path_leaving_the_package_is_refused_without_reading_it(tmp_path, capsys):
    pkg = copy_fixture(tmp_path / "in.mlpackage")
    set_weight_file_name(pkg, "@model_path/../../../secret")
    (tmp_path / "secret").write_bytes(b"TOPSECRET" * 100)
    code, out, err = cli(capsys, "optimize", pkg, tmp_path / "out.mlpackage")
    assert code == 2
    assert err == (
        f"mlopt: error: {pkg / 'Data' / 'com.apple.CoreML'}: weight file name '@model_path/../../../secret' "
        "points outside the package\n"
    )
    assert "TOPSECRET" not in err


# -- special files are never opened ----------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["Data/fifo", "Data/com.apple.CoreML/weights/weight.bin", "Manifest.json", "socket"])
def test_special_files_are_refused_without_opening_them(tmp_path, where):
    pkg = copy_fixture(tmp_path / "in.mlpackage")
    path = pkg / where
    if path.exists():
        path.unlink()
    if where == "socket":
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        kind = "a socket"
    else:
        os.mkfifo(path)
        kind = "a FIFO"
    for argv in (["optimize", pkg, tmp_path / "out.mlpackage"], ["inspect", pkg], ["verify", pkg, pkg]):
        result = subprocess.run([sys.executable, "-m", "mlopt", *map(str, argv)], capture_output=True, text=True, timeout=30)
        assert result.returncode == 2, result.stderr
        assert result.stderr == f"mlopt: error: {path}: is {kind}, not a regular file; mlopt never opens special files\n"
    assert not (tmp_path / "out.mlpackage").exists() and leftovers(tmp_path) == []


# -- what --force may replace ------------------------------------------------------------------------------------
def test_force_never_deletes_a_plain_folder(tmp_path, capsys):
    docs = tmp_path / "my_documents"
    docs.mkdir()
    (docs / "precious.txt").write_text("mine")
    code, out, err = cli(capsys, "optimize", fixture_path("hf_fp16_ios17"), docs, "--force")
    assert code == 2
    assert err == f"mlopt: error: {docs}: is a folder but not an .mlpackage (no Manifest.json); --force replaces only a package, so it is left alone\n"
    assert (docs / "precious.txt").read_text() == "mine"


def test_force_never_replaces_the_folder_holding_the_input(tmp_path, capsys):
    """OUT = the folder that holds IN (made to look like a package): refused, IN and its neighbours kept."""
    holder = tmp_path / "holder.mlpackage"
    pkg = copy_fixture(holder / "in.mlpackage")
    (holder / "Manifest.json").write_text("{}")
    (holder / "neighbour.txt").write_text("keep")
    before = snapshot(tmp_path)
    code, out, err = cli(capsys, "optimize", pkg, holder, "--force")
    assert code == 2
    assert err == f"mlopt: error: {holder}: contains the input package {pkg}; refusing to replace it\n"
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_output_inside_the_input_is_refused_up_front(tmp_path, capsys, force):
    pkg = copy_fixture(tmp_path / "in.mlpackage")
    before = snapshot(tmp_path)
    out = pkg / "Data" / "nested" / "out.mlpackage"
    code, _, err = cli(capsys, "optimize", pkg, out, *force)
    assert code == 2
    assert err == f"mlopt: error: {out}: is inside the input package {pkg}; write the output outside it\n"
    assert snapshot(tmp_path) == before


def test_force_on_a_file_or_a_link_is_refused(tmp_path, capsys):
    target = copy_fixture(tmp_path / "target.mlpackage")
    (tmp_path / "out.mlpackage").symlink_to(target)
    (tmp_path / "file.mlpackage").write_text("a file")
    before = snapshot(tmp_path)
    assert cli(capsys, "optimize", fixture_path("hf_fp16_ios17"), tmp_path / "out.mlpackage", "--force")[0] == 2
    assert cli(capsys, "optimize", fixture_path("hf_fp16_ios17"), tmp_path / "file.mlpackage", "--force")[0] == 2
    assert snapshot(tmp_path) == before


# -- claiming OUT atomically ---------------------------------------------------------------------------------------
def test_an_out_that_appears_during_the_run_is_not_replaced(tmp_path, capsys, monkeypatch):
    """Another writer creates OUT after our check and before our rename: we lose, exit 2, theirs is kept."""
    out = tmp_path / "out.mlpackage"
    real_commit = writer_module.PackageWriter._put_in_place

    def someone_else_first(self):
        out.mkdir()
        (out / "theirs").write_text("theirs")
        return real_commit(self)

    monkeypatch.setattr(writer_module.PackageWriter, "_put_in_place", someone_else_first)
    code, _, err = cli(capsys, "optimize", fixture_path("hf_fp16_ios17"), out)
    assert code == 2
    assert err == f"mlopt: error: {out}: already exists: it appeared while mlopt was writing; nothing was replaced (use --force to replace it)\n"
    assert os.listdir(out) == ["theirs"] and leftovers(tmp_path) == []


def test_two_runs_onto_one_out_one_wins(tmp_path):
    big = tmp_path / "in.mlpackage"
    copy_fixture(big, "decoder_fp16_ios17")
    with open(big / WEIGHTS, "ab") as f:
        f.write(os.urandom(64 << 20))  # so both runs are still copying when the other starts
    out = tmp_path / "out.mlpackage"
    argv = [sys.executable, "-m", "mlopt", "optimize", str(big), str(out)]
    runs = [subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = sorted((p.wait(timeout=60), p.stderr.read()) for p in runs)
    assert [code for code, _ in results] == [0, 2]
    assert "already exists" in results[1][1]
    assert op_types(str(out)) and leftovers(tmp_path) == []


# -- durability ----------------------------------------------------------------------------------------------------
def test_every_file_and_folder_is_flushed_before_the_rename(tmp_path, monkeypatch):
    from mlopt import optimize_package
    from mlopt.package import claim

    flushed, order = set(), []
    real_fsync, real_claim = os.fsync, claim.claim

    def fsync(fd):
        st = os.fstat(fd)
        flushed.add((st.st_dev, st.st_ino))
        return real_fsync(fd)

    def claim_after_flushes(dir_fd, staging, out):
        root = os.path.join(tmp_path, staging)
        every = [root] + [os.path.join(r, n) for r, ds, fs in os.walk(root) for n in ds + fs]
        order.append(all((os.stat(p).st_dev, os.stat(p).st_ino) in flushed for p in every))
        return real_claim(dir_fd, staging, out)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(claim, "claim", claim_after_flushes)
    optimize_package(fixture_path("decoder_fp16_ios17"), tmp_path / "out.mlpackage")
    assert order == [True]
    parent = os.stat(tmp_path)
    assert (parent.st_dev, parent.st_ino) in flushed  # the rename itself, flushed


# -- leftovers -----------------------------------------------------------------------------------------------------
def _dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_staging_left_by_a_dead_run_is_removed_and_reported(tmp_path, capsys, monkeypatch):
    """Removed: the owner's pid is gone, or is now another process (other start time). Kept: the owner is alive,
    or on another host (a shared file system), or the name is not mlopt's."""
    names = {}
    for who, pid in (("dead", _dead_pid()), ("alive", os.getppid())):  # named as that process would name it
        monkeypatch.setattr(os, "getpid", lambda: pid)
        names[who] = staging_module.new_name("out.mlpackage", staging_module.TMP)
        monkeypatch.undo()
    host, pid, started, token = names["alive"].split(staging_module.TMP)[1].split("-")
    names["reused"] = names["alive"].replace(f"-{pid}-{started}-", f"-{pid}-{int(started) + 1}-")
    names["other host"] = names["dead"].replace(host, "0" * 8)
    names["not ours"] = ".out.mlpackage.mlopt-tmp-precious"
    for name in names.values():
        (tmp_path / name).mkdir()
        (tmp_path / name / "half.bin").write_bytes(b"x" * 1000)
    code, text, err = cli(capsys, "optimize", fixture_path("hf_fp16_ios17"), tmp_path / "out.mlpackage")
    assert code == 0, err
    for who in ("dead", "reused"):
        assert f"  removed {tmp_path / names[who]}, left by an mlopt run that is gone" in text.splitlines()
        assert not (tmp_path / names[who]).exists()
    for who in ("alive", "other host", "not ours"):
        assert (tmp_path / names[who] / "half.bin").exists(), who


def test_sigkill_leftover_is_removed_by_the_next_run(tmp_path):
    big = copy_fixture(tmp_path / "in.mlpackage", "decoder_fp16_ios17")
    out = tmp_path / "out.mlpackage"
    victim = Child(["optimize", big, out], pause_at="copy", timeout=60)  # held after the first file of the copy
    assert victim.paused() == "copy"
    victim.send(signal.SIGKILL)
    assert victim.wait().code == 128 + signal.SIGKILL
    assert leftovers(tmp_path), "a killed run leaves its staging folder"
    result = subprocess.run([sys.executable, "-m", "mlopt", "optimize", str(big), str(out)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "left by an mlopt run that is gone" in result.stdout
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)])
def test_signals_mid_copy_leave_nothing(tmp_path, signum, code):
    big = copy_fixture(tmp_path / "in.mlpackage", "decoder_fp16_ios17")
    out = tmp_path / "new" / "out.mlpackage"
    run = Child(["optimize", big, out], pause_at="copy", timeout=60)
    assert run.paused() == "copy"
    run.send(signum)
    result = run.wait()  # the copy goes on only once the signal has cancelled it
    assert result.code == code, (result.how, result.stderr)
    assert result.stderr == f"mlopt: interrupted by {signal.Signals(signum).name}; no partial output was left\n"
    assert sorted(os.listdir(tmp_path)) == ["in.mlpackage"]  # no OUT, no staging, no created parent


def test_ignored_sighup_stays_ignored(tmp_path):
    """`nohup mlopt ...`: a SIGHUP the parent set to be ignored does not stop the run."""
    out = tmp_path / "out.mlpackage"
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # inherited by the child, as nohup does
    try:
        run = Child(["optimize", fixture_path("decoder_fp16_ios17"), out], pause_at="copy", timeout=60)
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert run.paused() == "copy"
    run.send(signal.SIGHUP)
    run.resume()
    result = run.wait()
    assert result.code == 0, (result.how, result.stderr)
    assert op_types(str(out))


# -- tracebacks ----------------------------------------------------------------------------------------------------
def test_closed_stdout_exits_141_without_traceback(tmp_path):
    run = subprocess.Popen(
        [sys.executable, "-m", "mlopt", "inspect", fixture_path("real/decoder_qwen3_fp16_ios17"), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    run.stdout.read(10)
    run.stdout.close()  # `| head -c 10`
    stderr = run.stderr.read().decode()
    code = run.wait(timeout=60)
    assert "Traceback" not in stderr and "Error" not in stderr
    assert code in (0, 141)  # 0 when the whole report fit in the pipe before it was closed


# -- output locations that cannot be used ---------------------------------------------------------------------------
def test_out_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, _, err = cli(capsys, "optimize", fixture_path("hf_fp16_ios17"), "--out-dir", tmp_path / "file")
    assert code == 2 and err == f"mlopt: error: {tmp_path / 'file'}: --out-dir is not a folder\n"


def test_parent_of_out_is_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "out.mlpackage"
    code, _, err = cli(capsys, "optimize", fixture_path("hf_fp16_ios17"), out)
    assert code == 2 and err == f"mlopt: error: {out}: cannot be created: {tmp_path / 'file'} is not a folder\n"


def test_unwritable_output_folder_names_out_not_the_staging_folder(tmp_path, capsys, monkeypatch):
    real_mkdir = os.mkdir

    def denied(path, *args, **kwargs):
        if staging_module.TMP in str(path):
            raise PermissionError(13, "Permission denied")
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", denied)
    out = tmp_path / "out.mlpackage"
    code, _, err = cli(capsys, "optimize", fixture_path("hf_fp16_ios17"), out)
    assert code == 2
    assert err == f"mlopt: error: {out}: cannot be written in {tmp_path} (Permission denied)\n"


# -- malformed packages --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", [1, 5, 11, 9999, 2**31 - 1])
def test_unsupported_specification_versions(tmp_path, capsys, version):
    from mlopt.package.proto import Model_pb2

    pkg = copy_fixture(tmp_path / "in.mlpackage")
    spec = Model_pb2.Model()
    spec.ParseFromString((pkg / MODEL).read_bytes())
    spec.specificationVersion = version
    (pkg / MODEL).write_bytes(spec.SerializeToString())
    code, _, err = cli(capsys, "optimize", pkg, tmp_path / "out.mlpackage")
    assert code == 2
    assert err == (
        f"mlopt: error: {pkg / MODEL}: specification version {version} is not one mlopt supports for ML programs "
        "(6-10: iOS15 to iOS26)\n"
    )


@pytest.mark.parametrize("which", [MODEL, WEIGHTS])
def test_git_lfs_pointers(tmp_path, capsys, which):
    pkg = copy_fixture(tmp_path / "in.mlpackage")
    (pkg / which).write_text("version https://git-lfs.github.com/spec/v1\noid sha256:4d7a\nsize 1234\n")
    code, _, err = cli(capsys, "optimize", pkg, tmp_path / "out.mlpackage")
    what = "model" if which == MODEL else "weights"
    assert code == 2
    assert err == f"mlopt: error: {pkg / which}: is a Git LFS pointer, not the {what}; run `git lfs pull` in its repository\n"


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"", "is 0 bytes, too short for a weight file (a 64-byte header at least)"),
        (b"\x01\x00\x00\x00\x07\x00\x00\x00" + bytes(56), "is not a MILBlob v2 weight file (header says version 7)"),
    ],
)
def test_broken_weight_files_even_with_no_verify(tmp_path, capsys, content, problem):
    pkg = copy_fixture(tmp_path / "in.mlpackage")
    (pkg / WEIGHTS).write_bytes(content)
    code, _, err = cli(capsys, "optimize", pkg, tmp_path / "out.mlpackage", "--no-verify")
    assert code == 2 and err == f"mlopt: error: {pkg / WEIGHTS}: {problem}\n"


def test_truncated_weight_file(tmp_path, capsys):
    pkg = copy_fixture(tmp_path / "in.mlpackage", "decoder_fp16_ios17")
    data = (pkg / WEIGHTS).read_bytes()
    (pkg / WEIGHTS).write_bytes(data[: len(data) // 2])
    code, _, err = cli(capsys, "optimize", pkg, tmp_path / "out.mlpackage")
    assert code == 2 and err.startswith(f"mlopt: error: {pkg / WEIGHTS}: blob ") and err.count("\n") == 1


def test_manifest_nested_too_deep_and_control_characters(tmp_path, capsys):
    pkg = copy_fixture(tmp_path / "in.mlpackage")
    manifest = pkg / "Manifest.json"
    manifest.write_text("[" * 100_000 + "]" * 100_000)
    code, _, err = cli(capsys, "optimize", pkg, tmp_path / "out.mlpackage")
    assert code == 2 and err == f"mlopt: error: {manifest}: not a Manifest (JSON nested too deeply)\n"
    entries = {"rootModelIdentifier": "m", "itemInfoEntries": {"m": {"path": "com.apple.CoreML/model\x00.mlmodel"}}}
    manifest.write_text(json.dumps(entries))
    code, _, err = cli(capsys, "optimize", pkg, tmp_path / "out.mlpackage")
    assert code == 2 and err == f"mlopt: error: {manifest}: root model path 'com.apple.CoreML/model\\x00.mlmodel' contains a control character\n"


@pytest.mark.parametrize("content, problem", [(None, "holds no arrays"), ("wrong shape", "array 'x' has shape [3]; input 'x' of function 'main' is [1, 4, 16]")])
def test_verify_inputs_that_do_not_fit(tmp_path, capsys, content, problem):
    import numpy as np

    npz = tmp_path / "in.npz"
    if content is None:
        np.savez(npz)
    else:
        np.savez(npz, x=np.zeros(3, np.float16))
    pkg = fixture_path("hf_fp16_ios17")
    code, _, err = cli(capsys, "verify", pkg, differing_copy(pkg, tmp_path), "--inputs", npz)
    assert code == 2 and err == f"mlopt: error: {npz}: {problem}\n"


@pytest.mark.parametrize("where", ["input", "op"])
def test_verify_refuses_shapes_beyond_its_memory_budget(tmp_path, capsys, where):
    """A few bytes of protobuf can declare 2^30 elements: verify says so (exit 3) before allocating anything."""
    from mlopt.package.proto import Model_pb2

    pkg = copy_fixture(tmp_path / "in.mlpackage")
    spec = Model_pb2.Model()
    spec.ParseFromString((pkg / MODEL).read_bytes())
    function = spec.mlProgram.functions["main"]
    if where == "input":
        dims = function.inputs[0].type.tensorType.dimensions
    else:
        op = next(o for o in function.block_specializations["CoreML7"].operations if o.type == "pow")
        dims = op.outputs[0].type.tensorType.dimensions
    dims[1].constant.size = 2**20
    dims[2].constant.size = 2**10
    (pkg / MODEL).write_bytes(spec.SerializeToString())
    code, _, err = cli(capsys, "verify", pkg, differing_copy(pkg, tmp_path))
    assert code == 3
    if where == "input":
        assert err == (
            f"mlopt: error: {pkg}: cannot be verified: function 'main': input 'x' of shape [1, 1048576, 1024] holds "
            "1073741824 elements; random inputs are limited to 67108864 elements in total per function (1073741824 needed so far)\n"
        )
    else:
        assert err == (
            f"mlopt: error: {pkg}: cannot be verified: function 'main': op '{op.attributes['name'].immediateValue.tensor.strings.values[0]}' "
            "(pow) declares 1073741824 elements, more than verify's budget of 134217728 per value\n"
        )


@pytest.mark.parametrize("field, value, problem", [
    ("dtype", 2, "stores float32, the program reads it as float16"),
    ("size", 2, "holds 2 bytes; the program's shape [16] needs 32"),
    ("data_offset", 10**9, "its 32 bytes at 1000000000 run past the end of the file"),
])
def test_gamma_blob_that_does_not_hold_what_the_program_says(tmp_path, capsys, field, value, problem):
    """The metadata record of the gamma blob (fp16[16]) is rewritten: exit 2 naming weight.bin and the blob."""
    import struct

    from mlopt.package.proto import Model_pb2

    pkg = copy_fixture(tmp_path / "in.mlpackage")
    spec = Model_pb2.Model()
    spec.ParseFromString((pkg / MODEL).read_bytes())
    block = spec.mlProgram.functions["main"].block_specializations["CoreML7"]
    offset = next(op for op in block.operations if op.attributes["val"].WhichOneof("value") == "blobFileValue").attributes["val"].blobFileValue.offset
    data = bytearray((pkg / WEIGHTS).read_bytes())
    sentinel, dtype, size, data_offset = struct.unpack_from("<IIQQ", data, offset)
    record = {**dict(dtype=dtype, size=size, data_offset=data_offset), field: value}
    struct.pack_into("<IIQQ", data, offset, sentinel, record["dtype"], record["size"], record["data_offset"])
    (pkg / WEIGHTS).write_bytes(bytes(data))
    code, _, err = cli(capsys, "optimize", pkg, tmp_path / "out.mlpackage", "--no-verify")
    assert code == 2
    assert err.startswith(f"mlopt: error: {pkg / WEIGHTS}: blob at offset {offset}") and problem in err, err
    assert err.count("\n") == 1 and not (tmp_path / "out.mlpackage").exists()


# -- found by trying to break it (each was a reproduced defect) ------------------------------------------------------
def test_batch_out_dir_inside_an_input_package_is_refused(tmp_path, capsys):
    pkg = copy_fixture(tmp_path / "x.mlpackage")
    copy_fixture(tmp_path / "models" / "a.mlpackage")
    before = snapshot(pkg)
    out_dir = pkg / "Data"
    code, _, err = cli(capsys, "optimize", pkg, tmp_path / "models", "--out-dir", out_dir)
    assert code == 2
    assert err == f"mlopt: error: {out_dir}: --out-dir is inside the input package {pkg}; write the outputs outside it\n"
    assert snapshot(pkg) == before


def test_dot_dot_after_a_link_in_out_is_resolved_as_the_os_does(tmp_path, capsys):
    """`sl/../victim` is the victim beside sl's target, not the one beside sl: the latter is never touched."""
    copy_fixture(tmp_path / "real" / "deep" / "in.mlpackage")
    bystander = copy_fixture(tmp_path / "victim.mlpackage")
    (bystander / "mine").write_text("keep")
    (tmp_path / "sl").symlink_to(tmp_path / "real" / "deep")
    before = snapshot(bystander)
    out = f"{tmp_path / 'sl'}/../victim.mlpackage"
    code, _, err = cli(capsys, "optimize", tmp_path / "real" / "deep" / "in.mlpackage", out)
    assert code == 0, err
    assert snapshot(bystander) == before
    assert op_types(str(tmp_path / "real" / "victim.mlpackage"))


def test_force_never_replaces_a_package_holding_the_input_through_a_bind_mount(tmp_path, capsys):
    outer = copy_fixture(tmp_path / "OUT.mlpackage")
    inner = copy_fixture(outer / "Data" / "in.mlpackage")
    view = tmp_path / "view"
    view.mkdir()
    if subprocess.run(["mount", "--bind", str(outer / "Data"), str(view)], capture_output=True).returncode != 0:
        pytest.skip("bind mounts need root and a mount namespace that allows them")
    try:
        before = snapshot(inner)
        code, _, err = cli(capsys, "optimize", view / "in.mlpackage", outer, "--force")
        assert code == 2
        assert err == f"mlopt: error: {outer}: contains the input package {view / 'in.mlpackage'}; refusing to replace it\n"
        assert snapshot(inner) == before
        out = view / "nested" / "o.mlpackage"  # OUT inside IN, reached through the bind mount
        code, _, err = cli(capsys, "optimize", outer, out)
        assert code == 2 and err == f"mlopt: error: {out}: is inside the input package {outer}; write the output outside it\n"
    finally:
        subprocess.run(["umount", str(view)], check=True)


def test_a_signal_after_the_output_is_in_place_says_it_is_complete(tmp_path, capsys, monkeypatch):
    from mlopt.cli import app as main_module

    def interrupted_while_printing(text):
        raise KeyboardInterrupt

    monkeypatch.setattr(main_module, "_print", interrupted_while_printing)
    out = tmp_path / "out.mlpackage"
    code, _, err = cli(capsys, "optimize", fixture_path("hf_fp16_ios17"), out)
    assert code == 130
    assert err == "mlopt: interrupted by SIGINT after the output was written completely\n"
    assert "layer_norm" in op_types(str(out))


def test_long_names_sharing_their_start_never_share_working_folders(tmp_path, capsys, monkeypatch):
    """A stale `-old-` package of B (its run died between its renames) is never restored as A, although the two
    names share their first 100 characters; run for B, it is restored as B."""
    stem = "x" * 100
    dead = _dead_pid()
    monkeypatch.setattr(os, "getpid", lambda: dead)
    old_b = tmp_path / staging_module.new_name(f"{stem}B.mlpackage", staging_module.OLD)
    monkeypatch.undo()
    copy_fixture(old_b)
    (old_b / "THIS_IS_B").write_text("b")
    assert staging_module.prefix(f"{stem}A.mlpackage", staging_module.OLD) != staging_module.prefix(f"{stem}B.mlpackage", staging_module.OLD)
    code, _, err = cli(capsys, "optimize", fixture_path("hf_fp16_ios17"), tmp_path / f"{stem}A.mlpackage")
    assert code == 0, err
    assert not (tmp_path / f"{stem}A.mlpackage" / "THIS_IS_B").exists() and old_b.exists()
    code, text, err = cli(capsys, "optimize", fixture_path("hf_fp16_ios17"), tmp_path / f"{stem}B.mlpackage")
    assert code == 2  # B is back in place: replacing it needs --force, as for any existing OUT
    assert err == f"mlopt: error: {tmp_path / f'{stem}B.mlpackage'}: already exists (use --force to replace it)\n"
    assert (tmp_path / f"{stem}B.mlpackage" / "THIS_IS_B").exists() and not old_b.exists()


def test_a_250_byte_out_name_works(tmp_path, capsys):
    out = tmp_path / ("\N{GRINNING FACE}" * 60 + ".mlpackage")
    assert len(out.name.encode()) == 250
    code, _, err = cli(capsys, "optimize", fixture_path("hf_fp16_ios17"), out)
    assert code == 0, err
    assert op_types(str(out))


def test_jobs_never_exceeds_the_models(tmp_path, monkeypatch):
    from concurrent import futures as futures_module

    from mlopt import batch

    started = []
    real_pool = futures_module.ProcessPoolExecutor

    def recording_pool(max_workers, **kwargs):
        started.append(max_workers)
        return real_pool(max_workers=max_workers, **kwargs)

    monkeypatch.setattr(batch, "ProcessPoolExecutor", recording_pool)
    items = batch.plan([fixture_path("hf_fp16_ios17"), fixture_path("hf_fp32_ios15")], tmp_path / "out")
    result = batch.run(items, jobs=100000)
    assert started == [2] and result.exit_code == 0


def test_verify_inputs_too_large_are_refused_before_loading(tmp_path, capsys, monkeypatch):
    import numpy as np

    from mlopt.numerics import feeds

    monkeypatch.setattr(feeds, "MAX_INPUT_BYTES", 1000)
    npz = tmp_path / "bomb.npz"
    np.savez_compressed(npz, x=np.zeros(1000, np.float32))  # 4 KB of zeros in a few hundred bytes
    pkg = fixture_path("hf_fp16_ios17")
    code, _, err = cli(capsys, "verify", pkg, differing_copy(pkg, tmp_path), "--inputs", npz)
    assert code == 2
    assert err.startswith(f"mlopt: error: {npz}: array 'x' holds ") and err.endswith("bytes; --inputs arrays are limited to 1000\n")


def test_verify_stops_past_the_interpreters_memory_budget(tmp_path, capsys, monkeypatch):
    from mlopt.numerics import interpreter

    monkeypatch.setattr(interpreter, "MAX_LIVE_BYTES", 256)  # values of (1, 4, 16): 128 bytes in fp16
    pkg = fixture_path("decoder_fp16_ios17")
    code, _, err = cli(capsys, "verify", pkg, differing_copy(pkg, tmp_path))
    assert code == 3
    assert "the values held at once take" in err and "more than the interpreter's budget of 256" in err
    assert err.count("\n") == 1


def test_names_with_control_characters_stay_on_one_line(tmp_path, capsys):
    from mlopt.package.proto import Model_pb2

    pkg = copy_fixture(tmp_path / "in.mlpackage")
    spec = Model_pb2.Model()
    spec.ParseFromString((pkg / MODEL).read_bytes())
    op = next(o for o in spec.mlProgram.functions["main"].block_specializations["CoreML7"].operations if o.type == "pow")
    op.outputs[0].type.Clear()  # an error that names the op
    op.attributes["name"].immediateValue.tensor.strings.values[0] = "pow_0\nmlopt: wrote q.mlpackage\x1b[31m"
    (pkg / MODEL).write_bytes(spec.SerializeToString())
    code, _, err = cli(capsys, "optimize", pkg, tmp_path / "out.mlpackage")
    assert code == 2 and err.count("\n") == 1 and "\x1b" not in err
    assert "pow_0\\nmlopt: wrote q.mlpackage\\x1b[31m" in err


@pytest.mark.parametrize("where", ["manifest", "weights"])
def test_absolute_paths_in_the_package_are_refused(tmp_path, capsys, where):
    pkg = copy_fixture(tmp_path / "in.mlpackage")
    if where == "manifest":
        manifest = json.loads((pkg / "Manifest.json").read_text())
        manifest["itemInfoEntries"][manifest["rootModelIdentifier"]]["path"] = "/com.apple.CoreML/model.mlmodel"
        (pkg / "Manifest.json").write_text(json.dumps(manifest))
        expected = f"{pkg / 'Manifest.json'}: root model path '/com.apple.CoreML/model.mlmodel' is an absolute path; it must stay inside the package"
    else:
        set_weight_file_name(pkg, "/etc/passwd")
        expected = f"{pkg / 'Data' / 'com.apple.CoreML'}: weight file name '/etc/passwd' is an absolute path; it must stay inside the package"
    code, _, err = cli(capsys, "optimize", pkg, tmp_path / "out.mlpackage")
    assert code == 2 and err == f"mlopt: error: {expected}\n"


def test_stdout_closed_full_or_a_deleted_cwd(tmp_path):
    def mlopt(*argv, **kwargs):
        return subprocess.run([sys.executable, "-m", "mlopt", *map(str, argv)], capture_output="stdout" not in kwargs, text=True, **kwargs)

    pkg = fixture_path("hf_fp16_ios17")
    closed = subprocess.run(f"{shlex_quote(sys.executable)} -m mlopt optimize {pkg} {tmp_path / 'a.mlpackage'} >&-", shell=True, capture_output=False, stderr=subprocess.PIPE, text=True)
    assert closed.returncode == 0 and closed.stderr == ""
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "mlopt", "optimize", pkg, str(tmp_path / "b.mlpackage")], stdout=full, stderr=subprocess.PIPE, text=True)
    assert result.returncode == 1
    assert result.stderr == "mlopt: error: stdout: the report could not be printed (No space left on device); the optimize itself finished\n"
    gone = tmp_path / "gone"
    gone.mkdir()
    result = subprocess.run(f"cd {gone} && rmdir {gone} && {shlex_quote(sys.executable)} -m mlopt optimize {pkg} rel.mlpackage", shell=True, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr == "mlopt: error: rel.mlpackage: is a relative path and the current folder no longer exists; give an absolute path\n"


def shlex_quote(text):
    import shlex

    return shlex.quote(text)


def test_no_space_for_out_parents_is_exit_1_naming_out(tmp_path, capsys, monkeypatch):
    import errno

    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "mkdir", full)
    out = tmp_path / "new" / "out.mlpackage"
    code, _, err = cli(capsys, "optimize", fixture_path("hf_fp16_ios17"), out)
    assert code == 1
    assert err == f"mlopt: error: {out}: could not be written: folder {tmp_path / 'new'} cannot be made (No space left on device); nothing was written\n"
