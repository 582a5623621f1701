"""Compressed-weight ops (`constexpr_*`): dequantization, palettization (look-up tables) and sparsity.

iOS16 versions take their parameters as op attributes, iOS18 ones as inputs; the evaluator passes both as keyword
arguments, sub-byte integers (int4, uint1..uint6) unpacked into int8 / uint8 arrays. Semantics follow coremltools'
op definitions (converters/mil/mil/ops/defs/iOS16/constexpr_ops.py, iOS18/compression.py) and the bit packing of
its blob writer: least significant bit first.
"""

import numpy as np

from ...package.weights import unpack_bits

from .registry import implementation, scalar, numpy_dtype


def _block_index(data_shape, param_shape):
    """Index arrays selecting, for every element of a `data_shape` tensor, its block's entry of a per-block
    parameter of `param_shape` (same rank; each dim divides the data's)."""
    rank = len(data_shape)
    if len(param_shape) != rank:
        raise ValueError(f"per-block parameter of rank {len(param_shape)} for data of rank {rank}")
    index = []
    for axis, (n, m) in enumerate(zip(data_shape, param_shape)):
        if m == 0 or n % m:
            raise ValueError(f"dim {axis}: {m} blocks do not divide size {n}")
        shape = [1] * rank
        shape[axis] = n
        index.append((np.arange(n) // (n // m)).reshape(shape))
    return tuple(index)


def _shift_scale(data, scale, offset=None):
    """scale * (data - offset), per block: block size along each axis is data.shape / scale.shape."""
    data, scale = np.asarray(data), np.asarray(scale)
    index = _block_index(data.shape, scale.shape)
    values = data.astype(scale.dtype)
    if offset is not None:
        values = values - np.asarray(offset).astype(scale.dtype)[index]
    return (scale[index] * values).astype(scale.dtype)


def _dense(nonzero_data, mask):
    """Scatter `nonzero_data` into the set positions of `mask` (row-major), zeros elsewhere."""
    mask, nonzero_data = np.asarray(mask), np.asarray(nonzero_data).reshape(-1)
    selected = mask != 0
    if int(selected.sum()) != nonzero_data.size:
        raise ValueError(f"mask sets {int(selected.sum())} elements, nonzero_data holds {nonzero_data.size}")
    out = np.zeros(mask.shape, nonzero_data.dtype)
    out[selected] = nonzero_data
    return out


def _lut(indices, lut, vector_axis=None):
    """iOS18 palettization: lut is [group dims (rank of indices)..., NUM_PALETTES, VECTOR_SIZE]; every index picks
    a vector of its group's table, laid along `vector_axis` (output dim vector_axis grows VECTOR_SIZE times)."""
    indices, lut = np.asarray(indices), np.asarray(lut)
    rank = indices.ndim
    if lut.ndim != rank + 2:
        raise ValueError(f"lut of rank {lut.ndim} for indices of rank {rank} (needs {rank + 2})")
    if indices.size and int(indices.max()) >= lut.shape[-2]:
        raise ValueError(f"index {int(indices.max())} past a table of {lut.shape[-2]} entries")
    groups = _block_index(indices.shape, lut.shape[:rank])
    picked = lut[groups + (indices.astype(np.intp),)]  # indices.shape + (VECTOR_SIZE,)
    vector_size = lut.shape[-1]
    if vector_size == 1:
        return picked[..., 0]
    if vector_axis is None:
        raise ValueError("vector palettization (VECTOR_SIZE > 1) without vector_axis")
    axis = int(scalar(vector_axis)) % rank
    out_shape = list(indices.shape)
    out_shape[axis] *= vector_size
    return np.moveaxis(picked, -1, axis + 1).reshape(out_shape)


@implementation("constexpr_affine_dequantize")
def constexpr_affine_dequantize(quantized_data, zero_point, scale, axis):
    """iOS16: scale * (quantized_data - zero_point), computed in fp32 as coremltools does; scale and zero_point
    are scalars or vectors along `axis`."""
    data = np.asarray(quantized_data)
    axis = int(scalar(axis)) % data.ndim

    def along(param):
        param = np.asarray(param)
        if param.ndim == data.ndim:
            return param
        shape = [1] * data.ndim
        if param.ndim == 1:
            shape[axis] = param.size
        return param.reshape(shape)

    scale = np.asarray(scale)
    values = (data.astype(np.float32) - along(zero_point).astype(np.float32)) * along(scale).astype(np.float32)
    return values.astype(scale.dtype)


@implementation("constexpr_cast")
def constexpr_cast(source_val, output_dtype):
    return np.asarray(source_val).astype(numpy_dtype(output_dtype))


@implementation("constexpr_lut_to_dense")
def constexpr_lut_to_dense(lut, indices, shape=None, vector_axis=None):
    if shape is not None:  # iOS16: a vector lut, indices a uint8 vector packing log2(len(lut))-bit entries
        lut, shape = np.asarray(lut), [int(d) for d in np.asarray(shape).reshape(-1)]
        bits = int(lut.size).bit_length() - 1
        if lut.ndim != 1 or 1 << bits != lut.size:
            raise ValueError(f"iOS16 lut must be a vector of 2**n_bits entries, not of shape {list(lut.shape)}")
        count = int(np.prod(shape, dtype=object))
        return lut[unpack_bits(np.asarray(indices, np.uint8), bits, False, count)].reshape(shape)
    return _lut(indices, lut, vector_axis)


@implementation("constexpr_sparse_to_dense")
def constexpr_sparse_to_dense(nonzero_data, mask, shape=None):
    if shape is not None:  # iOS16: mask is a uint8 vector of packed bits (LSB first)
        shape = [int(d) for d in np.asarray(shape).reshape(-1)]
        count = int(np.prod(shape, dtype=object))
        bits = np.unpackbits(np.asarray(mask, np.uint8).reshape(-1), bitorder="little")
        if bits.size < count:
            raise ValueError(f"mask of {bits.size} bits for {count} elements")
        mask = bits[:count].reshape(shape)
    return _dense(nonzero_data, mask)


@implementation("constexpr_blockwise_shift_scale")
def constexpr_blockwise_shift_scale(data, scale, offset=None):
    return _shift_scale(data, scale, offset)


@implementation("constexpr_lut_to_sparse")
def constexpr_lut_to_sparse(indices_mask, indices_nonzero_data, lut, vector_axis=None):
    """(mask, nonzero values) of a sparse palettized tensor: the values are the table entries of the set
    positions, with the mask repeated along vector_axis for vector palettization."""
    mask = np.asarray(indices_mask)
    dense = _lut(_dense(indices_nonzero_data, mask), lut, vector_axis)
    lut = np.asarray(lut)
    if lut.shape[-1] > 1:
        mask = np.repeat(mask, lut.shape[-1], axis=int(scalar(vector_axis)) % mask.ndim)
    return mask, dense[mask != 0].reshape(-1)


@implementation("constexpr_sparse_blockwise_shift_scale")
def constexpr_sparse_blockwise_shift_scale(data_mask, nonzero_data, scale, offset=None):
    mask = np.asarray(data_mask)
    dense = _shift_scale(_dense(nonzero_data, mask), scale, offset)
    return mask, dense[mask != 0].reshape(-1)
