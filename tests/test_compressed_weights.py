"""Compressed weights (`constexpr_*` ops, iOS16 attributes and iOS18 inputs, sub-byte blobs and immediates).

Each case builds a small program with the MIL builder, converts and saves it (coremltools writes the real blobs,
bit-packed for sub-byte types), runs it in mlopt's interpreter and compares with coremltools' own decompression
(`materialized_val_inference`), computed while the program is built.
"""

import numpy as np
import pytest

import coremltools as ct
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import types

from conftest import op_types, run_package
from mlopt.package.weights import unpack_bits

rng = np.random.default_rng(0)
IOS16, IOS18 = ct.target.iOS16, ct.target.iOS18
U4, I4, U2, U1 = types.np_uint4_dtype, types.np_int4_dtype, types.np_uint2_dtype, types.np_uint1_dtype


def save(tmp_path, build, shape, target, name="m"):
    """Save a program whose output is x + weight (x: zeros of `shape`, fp32), weight = build(); return (path,
    coremltools' value of the weight)."""
    ref = {}

    @mb.program(input_specs=[mb.TensorSpec(shape, dtype=types.fp32)], opset_version=target)
    def prog(x):
        w = build()
        ref["w"] = w.op.materialized_val_inference()
        if w.dtype != types.fp32:
            w = mb.cast(x=w, dtype="fp32")
        return mb.add(x=x, y=w)

    path = str(tmp_path / f"{name}.mlpackage")
    model = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=target, skip_model_load=True,
                       compute_precision=ct.precision.FLOAT32)
    model.save(path)
    return path, ref["w"]


def check(tmp_path, build, shape, target, op_type):
    path, expected = save(tmp_path, build, shape, target)
    assert op_type in op_types(path, consts=True)
    out = run_package(path, {"x": np.zeros(shape, np.float32)})
    (got,) = out.values()
    np.testing.assert_allclose(got, np.asarray(expected, np.float32), rtol=1e-6, atol=1e-6)
    return got


# -- sub-byte unpacking against coremltools' packer ------------------------------------------------------------
@pytest.mark.parametrize("bits,signed", [(1, False), (2, False), (3, False), (4, False), (6, False), (4, True), (8, False)])
def test_unpack_bits_inverts_coremltools_packing(bits, signed):
    from coremltools.optimize._utils import pack_elements_into_bits

    lo, hi = (-(1 << (bits - 1)), 1 << (bits - 1)) if signed else (0, 1 << bits)
    values = rng.integers(lo, hi, 37).astype(np.int8 if signed else np.uint8)
    packed = pack_elements_into_bits(values, bits)
    np.testing.assert_array_equal(unpack_bits(packed, bits, signed, values.size), values)


# -- iOS16: parameters are attributes ----------------------------------------------------------------------------
@pytest.mark.parametrize("axis", [0, 1])
def test_affine_dequantize_ios16(tmp_path, axis):
    q = rng.integers(0, 256, (6, 5)).astype(np.uint8)
    n = q.shape[axis]
    scale = (rng.random(n) + 0.1).astype(np.float32)
    zp = rng.integers(0, 256, n).astype(np.uint8)
    check(tmp_path, lambda: mb.constexpr_affine_dequantize(quantized_data=q, zero_point=zp, scale=scale, axis=axis),
          q.shape, IOS16, "constexpr_affine_dequantize")


def test_affine_dequantize_ios16_scalar_params_int8_fp16(tmp_path):
    q = rng.integers(-128, 128, (4, 8)).astype(np.int8)
    check(tmp_path, lambda: mb.constexpr_affine_dequantize(quantized_data=q, zero_point=np.int8(3), scale=np.float16(0.25), axis=0),
          q.shape, IOS16, "constexpr_affine_dequantize")


def test_cast_ios16(tmp_path):
    src = rng.standard_normal((4, 6)).astype(np.float16)
    got = check(tmp_path, lambda: mb.constexpr_cast(source_val=src, output_dtype="fp32"), src.shape, IOS16, "constexpr_cast")
    np.testing.assert_array_equal(got, src.astype(np.float32))


@pytest.mark.parametrize("nbits", [1, 2, 4, 8])
def test_lut_to_dense_ios16(tmp_path, nbits):
    from coremltools.optimize._utils import pack_elements_into_bits

    shape = (5, 7)  # 35 elements: the last byte is partly padding
    lut = rng.standard_normal(2**nbits).astype(np.float32)
    idx = rng.integers(0, 2**nbits, 35).astype(np.uint8)
    packed = pack_elements_into_bits(idx, nbits)
    got = check(tmp_path, lambda: mb.constexpr_lut_to_dense(lut=lut, indices=packed, shape=np.array(shape, np.uint32)),
                shape, IOS16, "constexpr_lut_to_dense")
    np.testing.assert_array_equal(got, lut[idx].reshape(shape))


def test_sparse_to_dense_ios16(tmp_path):
    shape = (3, 7)
    dense = rng.standard_normal(shape).astype(np.float32) * (rng.random(shape) > 0.5)
    mask = np.packbits((dense != 0).reshape(-1).astype(np.uint8), bitorder="little")
    got = check(tmp_path, lambda: mb.constexpr_sparse_to_dense(nonzero_data=dense[dense != 0], mask=mask, shape=np.array(shape, np.uint32)),
                shape, IOS16, "constexpr_sparse_to_dense")
    np.testing.assert_array_equal(got, dense)


# -- iOS18: parameters are inputs, often sub-byte ----------------------------------------------------------------
@pytest.mark.parametrize("dtype,bits", [(U4, 4), (U2, 2), (U1, 1), (types.np_uint3_dtype, 3), (types.np_uint6_dtype, 6), (np.uint8, 8)])
def test_lut_to_dense_ios18_per_group(tmp_path, dtype, bits):
    idx = rng.integers(0, 2**bits, (8, 12)).astype(dtype)  # 96 elements: stored in the weight file
    lut = rng.standard_normal((2, 3, 2**bits, 1)).astype(np.float16)  # 2 x 3 groups of 4 x 4 elements
    check(tmp_path, lambda: mb.constexpr_lut_to_dense(indices=idx, lut=lut), idx.shape, IOS18, "constexpr_lut_to_dense")


def test_lut_to_dense_ios18_immediate_indices(tmp_path):
    idx = rng.integers(0, 4, (3, 3)).astype(U2)  # 9 elements: an immediate (packed bytes), not a blob
    lut = rng.standard_normal((1, 1, 4, 1)).astype(np.float32)
    got = check(tmp_path, lambda: mb.constexpr_lut_to_dense(indices=idx, lut=lut), idx.shape, IOS18, "constexpr_lut_to_dense")
    np.testing.assert_array_equal(got, lut[0, 0, idx.astype(int), 0])


@pytest.mark.parametrize("vector_axis", [0, 1])
def test_lut_to_dense_ios18_vector(tmp_path, vector_axis):
    idx = rng.integers(0, 16, (4, 6)).astype(U4)
    lut = rng.standard_normal((1, 2, 16, 3)).astype(np.float32)
    shape = (12, 6) if vector_axis == 0 else (4, 18)
    check(tmp_path, lambda: mb.constexpr_lut_to_dense(indices=idx, lut=lut, vector_axis=vector_axis), shape, IOS18, "constexpr_lut_to_dense")


@pytest.mark.parametrize("dtype,lo,hi", [(I4, -8, 8), (U4, 0, 16), (np.int8, -128, 128), (np.uint8, 0, 256)])
def test_blockwise_shift_scale_ios18(tmp_path, dtype, lo, hi):
    data = rng.integers(lo, hi, (8, 16)).astype(dtype)
    scale = (rng.random((2, 4)) + 0.1).astype(np.float16)  # blocks of 4 x 4
    offset = rng.integers(lo, hi, (2, 4)).astype(dtype)
    check(tmp_path, lambda: mb.constexpr_blockwise_shift_scale(data=data, scale=scale, offset=offset), data.shape, IOS18,
          "constexpr_blockwise_shift_scale")


def test_blockwise_shift_scale_ios18_small_int4_no_offset(tmp_path):
    data = rng.integers(-8, 8, (2, 3)).astype(I4)  # immediate int4 (packed bytes)
    scale = np.array([[0.5], [2.0]], np.float32)
    got = check(tmp_path, lambda: mb.constexpr_blockwise_shift_scale(data=data, scale=scale), data.shape, IOS18,
                "constexpr_blockwise_shift_scale")
    np.testing.assert_array_equal(got, data.astype(np.float32) * scale)


def test_sparse_to_dense_ios18(tmp_path):
    dense = rng.standard_normal((6, 9)).astype(np.float32) * (rng.random((6, 9)) > 0.4)
    mask = (dense != 0).astype(U1)
    got = check(tmp_path, lambda: mb.constexpr_sparse_to_dense(nonzero_data=dense[dense != 0], mask=mask), dense.shape, IOS18,
                "constexpr_sparse_to_dense")
    np.testing.assert_array_equal(got, dense)


def test_lut_to_sparse_then_sparse_to_dense_ios18(tmp_path):
    mask = (rng.random((8, 4)) > 0.5).astype(U1)
    nz = rng.integers(0, 4, int(mask.sum())).astype(U2)
    lut = rng.standard_normal((1, 1, 4, 1)).astype(np.float16)

    def build():
        m, v = mb.constexpr_lut_to_sparse(indices_mask=mask, indices_nonzero_data=nz, lut=lut)
        return mb.constexpr_sparse_to_dense(nonzero_data=v, mask=m)

    check(tmp_path, build, mask.shape, IOS18, "constexpr_lut_to_sparse")


def test_sparse_blockwise_shift_scale_then_sparse_to_dense_ios18(tmp_path):
    mask = (rng.random((8, 8)) > 0.5).astype(U1)
    nz = rng.integers(-8, 8, int(mask.sum())).astype(I4)
    scale = (rng.random((2, 1)) + 0.5).astype(np.float32)
    offset = rng.integers(-8, 8, (2, 1)).astype(I4)

    def build():
        m, v = mb.constexpr_sparse_blockwise_shift_scale(data_mask=mask, nonzero_data=nz, scale=scale, offset=offset)
        return mb.constexpr_sparse_to_dense(nonzero_data=v, mask=m)

    check(tmp_path, build, mask.shape, IOS18, "constexpr_sparse_blockwise_shift_scale")


def test_cast_ios18(tmp_path):
    src = rng.standard_normal((4, 6)).astype(np.float16)
    check(tmp_path, lambda: mb.constexpr_cast(source_val=src, output_dtype="fp32"), src.shape, IOS18, "constexpr_cast")


def test_chained_lut_of_quantized_table_ios18(tmp_path):
    """A palette that is itself int8-quantized: lut_to_dense reads the output of blockwise_shift_scale."""
    idx = rng.integers(0, 4, (4, 8)).astype(U2)
    qlut = rng.integers(-128, 128, (1, 1, 4, 1)).astype(np.int8)

    def build():
        lut = mb.constexpr_blockwise_shift_scale(data=qlut, scale=np.full((1, 1, 1, 1), 0.5, np.float32))
        return mb.constexpr_lut_to_dense(indices=idx, lut=lut)

    ref = {}

    @mb.program(input_specs=[mb.TensorSpec(idx.shape, dtype=types.fp32)], opset_version=IOS18)
    def prog(x):
        w = build()
        ref["w"] = qlut[0, 0, idx.astype(int), 0].astype(np.float32) * 0.5
        return mb.add(x=x, y=w)

    path = str(tmp_path / "chain.mlpackage")
    ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=IOS18, skip_model_load=True,
               compute_precision=ct.precision.FLOAT32).save(path)
    (got,) = run_package(path, {"x": np.zeros(idx.shape, np.float32)}).values()
    np.testing.assert_array_equal(got, ref["w"])


# -- a real compression path: coremltools.optimize.coreml on a saved model ----------------------------------------
@pytest.mark.parametrize("method", ["palettize", "linear_quantize"])
def test_optimized_model_matches_uncompressed_within_quantization_error(tmp_path, method):
    import coremltools.optimize.coreml as cto

    W = rng.standard_normal((64, 32)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec((2, 32), dtype=types.fp32)], opset_version=IOS18)
    def prog(x):
        return mb.linear(x=x, weight=W)

    model = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=IOS18, skip_model_load=True,
                       compute_precision=ct.precision.FLOAT32)
    if method == "palettize":
        config = cto.OpPalettizerConfig(mode="uniform", nbits=4, granularity="per_grouped_channel", group_size=16, weight_threshold=1)
        compressed, op_type = cto.palettize_weights(model, cto.OptimizationConfig(global_config=config)), "constexpr_lut_to_dense"
    else:
        config = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int4", granularity="per_block", block_size=8, weight_threshold=1)
        compressed, op_type = cto.linear_quantize_weights(model, cto.OptimizationConfig(global_config=config)), "constexpr_blockwise_shift_scale"
    base, small = str(tmp_path / "base.mlpackage"), str(tmp_path / "small.mlpackage")
    model.save(base)
    compressed.save(small)
    assert op_type in op_types(small, consts=True)
    (decompressed,) = [op.materialized_val_inference() for op in compressed._mil_program.functions["main"].operations if op.op_type == op_type]

    x = rng.standard_normal((2, 32)).astype(np.float32)
    (exact,) = run_package(base, {"x": x}).values()
    (got,) = run_package(small, {"x": x}).values()
    np.testing.assert_allclose(got, x @ decompressed.T.astype(np.float32), rtol=1e-5, atol=1e-5)  # the same weights
    np.testing.assert_allclose(exact, x @ W.T, rtol=1e-5, atol=1e-5)
    assert np.abs(got - exact).max() < 0.2 * np.abs(exact).max()  # 4-bit quantization error, not garbage
    assert np.abs(got - exact).max() > 0  # and really compressed


def test_sub_byte_blob_read_with_other_bits_is_bad_input(tmp_path):
    import os

    from conftest import main_view
    from mlopt.graph.stored_constants import check_blob_references
    from mlopt.package.weights import BlobError, BlobReader
    from mlopt.package import read_package

    idx = rng.integers(0, 16, (8, 12)).astype(U4)
    lut = rng.standard_normal((1, 1, 16, 1)).astype(np.float32)
    path, _ = save(tmp_path, lambda: mb.constexpr_lut_to_dense(indices=idx, lut=lut), idx.shape, IOS18)
    (op,) = [op for op in main_view(path).main.operations if op.type == "constexpr_lut_to_dense"]
    blob = op.inputs["indices"].arguments[0].value.blobFileValue
    package = read_package(path)
    blobs = BlobReader(os.path.dirname(package.model_path))
    try:
        check_blob_references(package.spec, blobs)  # sub-byte blobs are sized by their bits
        np.testing.assert_array_equal(blobs.read_packed(blob.fileName, blob.offset, 4, False, idx.shape), idx.astype(np.uint8))
        with pytest.raises(BlobError, match="4-bit elements"):
            blobs.read_packed(blob.fileName, blob.offset, 2, False, idx.shape)
        with pytest.raises(BlobError, match="needs"):
            blobs.read_packed(blob.fileName, blob.offset, 4, False, (8, 100))
    finally:
        blobs.close()
