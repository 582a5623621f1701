"""Updating the staged weight file in place (NewBlobs.write(in_place=True), PackageWriter._open_private) gives the
same bytes as writing it anew, on every layout - the dropped blob last, in the middle, first, several dropped,
none dropped - and on the compressed weight files of fixtures/wide; it writes nothing that is already where it
belongs; and it never writes through a file the input shares (`--link`)."""

import hashlib
import json
import os
import shutil

import numpy as np
import pytest

from coremltools import libmilstoragepython

from conftest import blob_consts_program, fixture_path, load_in_coremltools, tree_digest
from mlopt import optimize_package
from mlopt.graph.dtypes import DT, FLOAT16, FLOAT32, NUMPY, SUB_BYTE
from mlopt.package import read_package
from mlopt.package import weight_writer, writer
from mlopt.package.weight_writer import NewBlobs
from mlopt.package.weights import BlobReader, blob_values
from mlopt.rules.split_wide_pattern import MAX_CHANNELS

FILE = "@model_path/weights/weight.bin"
WEIGHTS = os.path.join("Data", "com.apple.CoreML", "weights", "weight.bin")
UINT4, INT8 = DT.Value("UINT4"), DT.Value("INT8")
EXPECTED = json.load(open(os.path.join(os.path.dirname(fixture_path("x", "wide")), "expected.json")))
WIDE = sorted(EXPECTED)

# Five blobs of several types; sizes that are not multiples of 64 bytes, so every blob is followed by padding.
BLOBS = [
    ("f16", FLOAT16, [6, 5], np.arange(30, dtype=np.float16) / 8),
    ("f32", FLOAT32, [4, 3], np.arange(12, dtype=np.float32) - 5.5),
    ("u4", UINT4, [4, 6], (np.arange(24) % 16).astype(np.uint8)),  # palettized indices: 3 bytes a row
    ("i8", INT8, [3, 7], (np.arange(21) - 10).astype(np.int8)),
    ("big", FLOAT16, [8, 40], np.linspace(-1, 1, 320).astype(np.float16)),
]


@pytest.fixture
def five(tmp_path):
    """A weight file of BLOBS written by coremltools; (folder, {name: offset})."""
    os.makedirs(tmp_path / "src" / "weights")
    store = libmilstoragepython._BlobStorageWriter(str(tmp_path / "src" / "weights" / "weight.bin"))
    write = {FLOAT16: lambda a: store.write_fp16_data(a.view(np.uint16)), FLOAT32: store.write_float_data,
             UINT4: store.write_uint4_data, INT8: store.write_int8_data}
    offsets = {name: write[dtype](values) for name, dtype, _, values in BLOBS}
    del store  # flushed and closed
    return str(tmp_path / "src"), offsets


program = blob_consts_program


def offsets_of(spec):
    return [v.blobFileValue.offset for f in spec.mlProgram.functions.values() for v in blob_values(f)]


def np_dtype(dtype):
    return np.uint8 if dtype in SUB_BYTE else NUMPY[dtype]


def layout(dropped, appended=False):
    """A program builder: every blob of BLOBS but those in `dropped`, each dropped one split in two along its first
    axis (new blobs: byte ranges of it), and with `appended` a computed blob and a scaled one added."""

    def build(new, at):
        consts = []
        for name, dtype, shape, _ in BLOBS:
            if name not in dropped:
                consts.append((at[name], dtype, shape))
        for name, dtype, shape, _ in BLOBS:
            if name in dropped:
                half = shape[0] // 2
                for begin, end in ((0, half), (half, shape[0])):
                    offset = new.add_slice(FILE, at[name], np_dtype(dtype), shape, 0, begin, end)
                    consts.append((offset, dtype, [end - begin, *shape[1:]]))
        if appended:
            consts.append((new.add_array(FILE, np.arange(7, dtype=np.float32)), FLOAT32, [7]))
            consts.append((new.add_scaled(FILE, at["f16"], np.float16, [6, 5], 0.5), FLOAT16, [6, 5]))
        return program(consts)

    return build


def write_both(folder, at, build, target, monkeypatch):
    """The weight file `build`'s program gets, written anew (into an empty file) and in place (over a copy of the
    input's file): {mode: (bytes, remapped offsets, the byte-range copies made as (from, to, nbytes))}."""
    results = {}
    for mode in ("anew", "in place"):
        copies = []
        real = weight_writer._copy_range
        monkeypatch.setattr(weight_writer, "_copy_range", lambda s, d, a, b, n: copies.append((a, b, n)) or real(s, d, a, b, n))
        reader = BlobReader(folder)
        try:
            new = NewBlobs(reader)
            spec = build(new, at)
            path = os.path.join(target, mode.replace(" ", "_") + ".bin")
            if mode == "in place":
                shutil.copyfile(os.path.join(folder, "weights", "weight.bin"), path)
            fd = os.open(path, os.O_RDWR | (0 if mode == "in place" else os.O_CREAT | os.O_EXCL))
            try:
                new.write(spec, FILE, fd, in_place=mode == "in place")
            finally:
                os.close(fd)
        finally:
            reader.close()
        monkeypatch.setattr(weight_writer, "_copy_range", real)
        with open(path, "rb") as f:
            results[mode] = (f.read(), offsets_of(spec), copies)
    return results


LAYOUTS = {
    "dropped last": ({"big"}, False),
    "dropped in the middle": ({"u4"}, False),
    "dropped first": ({"f16"}, False),
    "several dropped": ({"f32", "i8"}, False),
    "every one dropped": ({name for name, *_ in BLOBS}, False),
    "nothing dropped, blobs appended": (set(), True),
    "dropped and appended": ({"f32"}, True),
}


@pytest.mark.parametrize("name", LAYOUTS)
def test_in_place_gives_the_bytes_of_a_new_file(five, tmp_path, monkeypatch, name):
    folder, at = five
    dropped, appended = LAYOUTS[name]
    results = write_both(folder, at, layout(dropped, appended), str(tmp_path), monkeypatch)
    (anew, anew_offsets, anew_copies), (in_place, in_place_offsets, in_place_copies) = results["anew"], results["in place"]
    assert in_place == anew and in_place_offsets == anew_offsets
    # only what moves is copied: a blob whose bytes are already at their new place is left as it is
    assert in_place_copies == [c for c in anew_copies if c[0] != c[1]]
    # the file coremltools reads: every kept blob and every half of a split one holds its values
    theirs = libmilstoragepython._BlobStorageReader(str(tmp_path / "in_place.bin"))
    read = {FLOAT16: lambda o: theirs.read_fp16_data(o).view(np.float16), FLOAT32: theirs.read_float_data,
            UINT4: theirs.read_uint4_data, INT8: theirs.read_int8_data}
    expected = []
    for blob, dtype, shape, values in BLOBS:
        if blob not in dropped:
            expected.append((dtype, values))
    for blob, dtype, shape, values in BLOBS:
        if blob in dropped:
            rows = values.reshape(shape)
            expected += [(dtype, rows[: shape[0] // 2].reshape(-1)), (dtype, rows[shape[0] // 2:].reshape(-1))]
    for (dtype, values), offset in zip(expected, in_place_offsets):
        np.testing.assert_array_equal(read[dtype](offset), values)
    assert int.from_bytes(in_place[:4], "little") == len(in_place_offsets)


def test_a_split_last_blob_costs_only_its_chunks(five, tmp_path, monkeypatch):
    """An LM head is the last blob: in place, the blobs before it are not copied at all, and its first chunk takes
    its place (record and rows where they were): only the rows after the first chunk are copied."""
    folder, at = five
    results = write_both(folder, at, layout({"big"}), str(tmp_path), monkeypatch)
    big = at["big"] + 64  # its data, right after its record
    assert [(start - big, n) for start, _, n in results["anew"][2] if start >= big] == [(0, 320), (320, 320)]
    assert [(start - big, n) for start, _, n in results["in place"][2]] == [(320, 320)]  # the second half only


def test_padding_the_input_filled_with_bytes_is_zeroed(five, tmp_path, monkeypatch):
    """A writer that leaves bytes other than zeros between blobs: in place, the new file still has zeros there,
    as a new file has."""
    folder, at = five
    path = os.path.join(folder, "weights", "weight.bin")
    with open(path, "r+b") as f:
        f.seek(at["f16"] + 64 + 60)  # after the 60 bytes of f16's data, before f32's record
        f.write(b"\xff" * 4)
    results = write_both(folder, at, layout({"u4"}), str(tmp_path), monkeypatch)
    assert results["in place"][0] == results["anew"][0]
    assert results["in place"][0][at["f16"] + 64 + 60: at["f16"] + 64 + 64] == b"\0" * 4


def test_a_copy_of_another_length_is_written_whole(five, tmp_path, monkeypatch):
    """in_place promises a whole copy; a file of another length is not one: it is written anew all the same."""
    folder, at = five
    reader = BlobReader(folder)
    try:
        new = NewBlobs(reader)
        spec = layout({"big"})(new, at)
        path = tmp_path / "short.bin"
        path.write_bytes(b"\x01" * 100)
        fd = os.open(path, os.O_RDWR)
        try:
            new.write(spec, FILE, fd, in_place=True)
        finally:
            os.close(fd)
    finally:
        reader.close()
    assert path.read_bytes() == write_both(folder, at, layout({"big"}), str(tmp_path), monkeypatch)["anew"][0]


def wide_layouts(package):
    """Layouts over a fixtures/wide package's own weight file: each blob the program reads dropped in turn (split
    in two along its first axis where it can be, else only dropped), every other one, and none with one appended."""
    values = [v for f in read_package(package).spec.mlProgram.functions.values() for v in blob_values(f)]
    stored = sorted({v.blobFileValue.offset: (v.type.tensorType.dataType, [d.constant.size for d in v.type.tensorType.dimensions])
                     for v in values}.items())

    def build_for(dropped, appended=False):
        def build(new, _):
            consts = [(o, dtype, shape) for k, (o, (dtype, shape)) in enumerate(stored) if k not in dropped]
            for k in sorted(dropped):
                offset, (dtype, shape) = stored[k]
                try:
                    half = shape[0] // 2
                    for begin, end in ((0, half), (half, shape[0])):
                        consts.append((new.add_slice(FILE, offset, np_dtype(dtype), shape, 0, begin, end), dtype, [end - begin, *shape[1:]]))
                except (ValueError, IndexError):  # a scalar, or a sub-byte row off a byte: only dropped
                    pass
            if appended:
                consts.append((new.add_array(FILE, np.arange(5, dtype=np.float16)), FLOAT16, [5]))
            return program(consts)

        return build

    yield from (build_for({k}) for k in range(len(stored)))
    yield build_for(set(range(0, len(stored), 2)))
    yield build_for(set(), appended=True)


@pytest.mark.parametrize("name", WIDE)
def test_in_place_on_the_wide_fixtures_weight_files(name, tmp_path, monkeypatch):
    """fp16, fp32, int8 and palettized (LUT and sub-byte indices) weight files as coremltools wrote them."""
    package = fixture_path(name, "wide")
    folder = os.path.join(package, "Data", "com.apple.CoreML")
    for k, build in enumerate(wide_layouts(package)):
        target = tmp_path / str(k)
        target.mkdir()
        results = write_both(folder, None, build, str(target), monkeypatch)
        assert results["in place"][:2] == results["anew"][:2], f"layout {k}"


def optimize_both(name, tmp_path, monkeypatch, **kwargs):
    """`name` optimized twice: as mlopt does (the staged copy updated in place) and with the weight file written
    anew; returns the two outputs and the `in_place` of every NewBlobs.write call of the first run."""
    calls = []
    real = weight_writer.NewBlobs.write
    monkeypatch.setattr(weight_writer.NewBlobs, "write", lambda self, *a, in_place=False: calls.append(in_place) or real(self, *a, in_place=in_place))
    in_place = tmp_path / "in_place.mlpackage"
    optimize_package(fixture_path(name, "wide") if isinstance(name, str) else name, in_place, **kwargs)
    first = calls[:]
    monkeypatch.setattr(writer.PackageWriter, "_open_private", lambda self, rel: None)
    anew = tmp_path / "anew.mlpackage"
    optimize_package(fixture_path(name, "wide") if isinstance(name, str) else name, anew, **kwargs)
    assert calls[len(first):] == [False] * len(first)  # the second run wrote the same files anew
    return in_place, anew, first


@pytest.mark.parametrize("name", WIDE)
def test_optimize_writes_the_same_package_either_way(name, tmp_path, monkeypatch):
    in_place, anew, calls = optimize_both(name, tmp_path, monkeypatch)
    assert tree_digest(in_place) == tree_digest(anew)
    # the one weight file of every head split (compressed ones too) was updated in place
    assert calls == ([True] if EXPECTED[name]["vocab"] > MAX_CHANNELS else [])
    load_in_coremltools(str(in_place))


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_a_linked_input_is_never_written_through(tmp_path, monkeypatch):
    """With --link the staged weight.bin is the input's own inode: it is unlinked and written anew, never updated
    in place; the input keeps its bytes and its inode, and the output is what a copying run writes."""
    src = tmp_path / "in.mlpackage"
    shutil.copytree(fixture_path("llama_32000_fp16_ios17", "wide"), src)
    before, inode = sha256(src / WEIGHTS), os.stat(src / WEIGHTS).st_ino
    calls = []
    real = weight_writer.NewBlobs.write
    monkeypatch.setattr(weight_writer.NewBlobs, "write", lambda self, *a, in_place=False: calls.append(in_place) or real(self, *a, in_place=in_place))
    linked = tmp_path / "linked.mlpackage"
    report = optimize_package(src, linked, link=True)
    assert "hard link" in report.copy_method and calls == [False]
    assert sha256(src / WEIGHTS) == before and os.stat(src / WEIGHTS).st_ino == inode and os.stat(src / WEIGHTS).st_nlink == 1
    assert os.stat(linked / WEIGHTS).st_ino != inode
    copied = tmp_path / "copied.mlpackage"
    optimize_package(src, copied)
    assert tree_digest(linked) == tree_digest(copied)
    load_in_coremltools(str(linked))


def test_a_file_with_another_name_is_never_updated_in_place(tmp_path, monkeypatch):
    """Even if the copy reported a hard link as its own new file, the weight file has a second name (st_nlink 2):
    the writer does not write through it. The input keeps its bytes."""
    src = tmp_path / "in.mlpackage"
    shutil.copytree(fixture_path("llama_32000_fp16_ios17", "wide"), src)
    before = sha256(src / WEIGHTS)
    real = writer.copy_into

    def lying_copy(src_fd, dir_fd, name, link_from=None, cancelled=lambda: False, made=None):
        method = real(src_fd, dir_fd, name, link_from=link_from, cancelled=cancelled)
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        made.append((st.st_dev, st.st_ino))
        return method

    monkeypatch.setattr(writer, "copy_into", lying_copy)
    out = tmp_path / "out.mlpackage"
    optimize_package(src, out, link=True)
    assert sha256(src / WEIGHTS) == before
    assert os.stat(out / WEIGHTS).st_ino != os.stat(src / WEIGHTS).st_ino


def test_a_staged_file_replaced_after_the_copy_is_not_written_through(tmp_path, monkeypatch):
    """The staged weight.bin swapped for another file (one name, so st_nlink alone would not tell) between the copy
    and the weight writing: the writer sees another inode than the one its copy made, and leaves it alone."""
    held = []
    real = writer.PackageWriter._write_weights

    def swap_then_write(self, spec, new_blobs):
        folder = self._folders["Data/com.apple.CoreML/weights"]
        fd = os.open("intruder", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=folder)
        os.write(fd, b"not yours")
        os.rename("intruder", "weight.bin", src_dir_fd=folder, dst_dir_fd=folder)
        held.append(fd)
        return real(self, spec, new_blobs)

    monkeypatch.setattr(writer.PackageWriter, "_write_weights", swap_then_write)
    out = tmp_path / "out.mlpackage"
    optimize_package(fixture_path("llama_32000_fp16_ios17", "wide"), out)
    fd, = held
    try:
        assert os.pread(fd, 100, 0) == b"not yours" and os.fstat(fd).st_nlink == 0  # untouched, unlinked
    finally:
        os.close(fd)
    monkeypatch.setattr(writer.PackageWriter, "_write_weights", real)
    anew = tmp_path / "anew.mlpackage"
    optimize_package(fixture_path("llama_32000_fp16_ios17", "wide"), anew)
    assert tree_digest(out) == tree_digest(anew)
