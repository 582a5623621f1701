"""The weight-file writer (package/weight_writer.py) against coremltools' own blob writer and reader: slices by byte
range (sub-byte blobs included), scaled blobs streamed, unreferenced blobs dropped, offsets remapped; and the
bounded-window reads patterns use for large stored constants."""

import os

import numpy as np
import pytest

from coremltools import libmilstoragepython

from mlopt.graph.dtypes import DT, FLOAT32
from mlopt.graph.stored_constants import StoredConstants
from mlopt.package.weight_writer import NewBlobs
from mlopt.package.weights import BlobReader
from conftest import blob_consts_program

FILE = "@model_path/weights/weight.bin"
UINT4 = DT.Value("UINT4")
A = np.arange(24, dtype=np.float32).reshape(4, 6) - 7.5
B = (np.arange(24) % 16).astype(np.uint8).reshape(4, 6)  # 4-bit indices, 3 bytes a row
C = np.ones(5, np.float16)


@pytest.fixture
def weights(tmp_path):
    """A weight file written by coremltools: blobs A (fp32), B (uint4) and C (fp16); (folder, {name: offset})."""
    os.makedirs(tmp_path / "weights")
    writer = libmilstoragepython._BlobStorageWriter(str(tmp_path / "weights" / "weight.bin"))
    offsets = {"A": writer.write_float_data(A.reshape(-1)), "B": writer.write_uint4_data(B.reshape(-1)),
               "C": writer.write_fp16_data(C.view(np.uint16))}
    del writer  # flushed and closed
    return str(tmp_path), offsets


program = blob_consts_program


def offsets_of(spec):
    return [op.attributes["val"].blobFileValue.offset for op in spec.mlProgram.functions["main"].block_specializations["CoreML7"].operations]


def test_slices_scales_and_drops(weights, tmp_path):
    folder, at = weights
    reader = BlobReader(folder)
    new = NewBlobs(reader)
    rows = new.add_slice(FILE, at["A"], np.float32, [4, 6], 0, 1, 3)
    cols = new.add_slice(FILE, at["A"], np.float32, [4, 6], 1, 2, 5)  # a run per row: byte ranges, not one
    packed = new.add_slice(FILE, at["B"], np.uint8, [4, 6], 0, 2, 4)
    scaled = new.add_scaled(FILE, at["A"], np.float32, [4, 6], 4.0)
    # the proof reads new blobs as they will be written
    overlay = new.reader_overlay()
    np.testing.assert_array_equal(overlay.read(FILE, cols, np.float32, [4, 3]), A[:, 2:5])
    np.testing.assert_array_equal(overlay.read_packed(FILE, packed, 4, False, [2, 6]), B[2:4])
    # the program keeps A and refers to the new blobs; C is no longer referred to
    spec = program([(at["A"], FLOAT32, [4, 6]), (rows, FLOAT32, [2, 6]), (cols, FLOAT32, [4, 3]),
                    (packed, UINT4, [2, 6]), (scaled, FLOAT32, [4, 6])])
    assert new.files_to_write(spec) == [FILE]
    out = tmp_path / "out.bin"
    fd = os.open(out, os.O_RDWR | os.O_CREAT | os.O_EXCL)
    try:
        methods = new.write(spec, FILE, fd)
    finally:
        os.close(fd)
    reader.close()
    assert "copy_file_range" in methods or "pread/pwrite" in methods
    a, r, c, p, s = offsets_of(spec)
    theirs = libmilstoragepython._BlobStorageReader(str(out))
    np.testing.assert_array_equal(theirs.read_float_data(a), A.reshape(-1))
    np.testing.assert_array_equal(theirs.read_float_data(r), A[1:3].reshape(-1))
    np.testing.assert_array_equal(theirs.read_float_data(c), A[:, 2:5].reshape(-1))
    np.testing.assert_array_equal(theirs.read_uint4_data(p), B[2:4].reshape(-1))
    np.testing.assert_array_equal(theirs.read_float_data(s), (A * 4).reshape(-1))
    data = out.read_bytes()
    assert int.from_bytes(data[:4], "little") == 5  # C dropped: five blobs, in offset order, 64-byte aligned
    assert [a, r, c, p, s] == sorted([a, r, c, p, s]) and all(o % 64 == 0 for o in (a, r, c, p, s))


def test_the_same_program_gives_the_same_bytes(weights, tmp_path):
    folder, at = weights
    outputs = []
    for k in range(2):
        reader = BlobReader(folder)
        new = NewBlobs(reader)
        spec = program([(new.add_scaled(FILE, at["A"], np.float32, [4, 6], 0.5), FLOAT32, [4, 6])])
        path = tmp_path / f"{k}.bin"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL)
        new.write(spec, FILE, fd)
        os.close(fd)
        reader.close()
        outputs.append(path.read_bytes())
    assert outputs[0] == outputs[1]


def test_a_sub_byte_slice_off_a_byte_boundary_is_refused(weights):
    folder, at = weights
    reader = BlobReader(folder)
    try:
        with pytest.raises(ValueError, match="a 4-bit weight cannot be split at element 3 along axis 1: not on a byte"):
            NewBlobs(reader).add_slice(FILE, at["B"], np.uint8, [4, 6], 1, 3, 5)
    finally:
        reader.close()


def test_large_stored_constants_stream_through_a_bounded_window(weights, monkeypatch):
    folder, at = weights
    reader = BlobReader(folder)
    read = []
    real = reader.read_window
    monkeypatch.setattr(reader, "read_window", lambda *a: read.append(a[-1]) or real(*a))
    try:
        value = program([(at["A"], FLOAT32, [4, 6])]).mlProgram.functions["main"].block_specializations["CoreML7"].operations[0].attributes["val"]
        stored = StoredConstants(reader, small=8)
        assert stored.small(value) is None  # 24 elements: more than read whole
        chunks = list(stored.chunks(value, window=5))
        assert [len(c) for c in chunks] == [5, 5, 5, 5, 4] and set(read) == {5}
        np.testing.assert_array_equal(np.concatenate(chunks), A.reshape(-1))
    finally:
        reader.close()
