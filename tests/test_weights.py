"""weight.bin blobs as the interpreter reads them equal what coremltools' own blob reader returns."""

import mmap
import os

import numpy as np
import pytest

from coremltools import libmilstoragepython

from conftest import fixture_path, main_view
from mlopt.graph.dtypes import FLOAT16, FLOAT32
from mlopt.package.weights import BlobError, BlobReader


def blob_consts(name):
    view = main_view(fixture_path(name))
    for op in view.ops():
        if op.type == "const" and op.attributes["val"].WhichOneof("value") == "blobFileValue":
            yield op.attributes["val"]


@pytest.mark.parametrize("name", ["decoder_fp16_ios17", "hf_fp32_ios15", "gemma_casts_fp16_ios17"])
@pytest.mark.parametrize("small", [BlobReader(".").small, 0])  # read with pread, and as views into the memory map
def test_blobs_match_coremltools_reader(name, small):
    model_dir = os.path.join(fixture_path(name), "Data", "com.apple.CoreML")
    ours = BlobReader(model_dir, small=small)
    theirs = libmilstoragepython._BlobStorageReader(os.path.join(model_dir, "weights", "weight.bin"))
    values = list(blob_consts(name))
    assert values
    for value in values:
        dtype = value.type.tensorType.dataType
        shape = [d.constant.size for d in value.type.tensorType.dimensions]
        offset = value.blobFileValue.offset
        if dtype == FLOAT16:
            expected = theirs.read_fp16_data(offset).view(np.float16)
            got = ours.read(value.blobFileValue.fileName, offset, np.float16, shape)
        else:
            assert dtype == FLOAT32
            expected = theirs.read_float_data(offset)
            got = ours.read(value.blobFileValue.fileName, offset, np.float32, shape)
        assert got.shape == tuple(shape)
        np.testing.assert_array_equal(got.reshape(-1), expected)
        # small blobs are read into arrays of their own; large ones are read-only views into the memory map
        assert isinstance(backing(got), mmap.mmap if small == 0 else np.ndarray)
        assert not got.flags.writeable
        copied = ours.read(value.blobFileValue.fileName, offset, got.dtype, shape, copy=True)  # what a full run uses
        np.testing.assert_array_equal(copied, got)
        assert not isinstance(backing(copied), mmap.mmap) and not copied.flags.writeable
    ours.close()


def backing(array):
    """The object an array's memory finally belongs to."""
    while isinstance(array, np.ndarray) and array.base is not None:
        array = array.base
    return array.obj if isinstance(array, memoryview) else array


def test_bad_offset_is_reported():
    model_dir = os.path.join(fixture_path("hf_fp16_ios17"), "Data", "com.apple.CoreML")
    reader = BlobReader(model_dir)
    with pytest.raises(BlobError, match="no blob at offset 8"):
        reader.read("@model_path/weights/weight.bin", 8, np.float16, [16])
    with pytest.raises(BlobError, match="blob offset 1000000000 is outside the file"):
        reader.read("@model_path/weights/weight.bin", 10**9, np.float16, [16])


def test_interpreter_returns_intermediates_on_request():
    """run_function(keep=...) hands back any intermediate value, here the chain's mean square."""
    from conftest import inputs_for
    from mlopt.numerics.interpreter import run_function

    view = main_view(fixture_path("hf_fp32_ios17"))
    (reduce_op,) = [op for op in view.main.operations if op.type == "reduce_mean"]
    mean_square = reduce_op.outputs[0].name
    feeds = inputs_for(fixture_path("hf_fp32_ios17"))
    model_dir = os.path.join(fixture_path("hf_fp32_ios17"), "Data", "com.apple.CoreML")
    values = run_function(view, BlobReader(model_dir), feeds, keep=[mean_square])
    assert set(values) == {"mul_1", mean_square}
    np.testing.assert_allclose(values[mean_square], np.mean(feeds["x"] ** 2, axis=-1, keepdims=True), rtol=1e-6)
