"""MIL DataType enum values, their numpy dtypes and the names `cast(dtype=...)` uses."""

import numpy as np

from ..package.proto import MIL_pb2

DT = MIL_pb2.DataType
FLOAT16, FLOAT32, FLOAT64 = DT.Value("FLOAT16"), DT.Value("FLOAT32"), DT.Value("FLOAT64")
INT32, BOOL, STRING = DT.Value("INT32"), DT.Value("BOOL"), DT.Value("STRING")

NUMPY = {
    FLOAT16: np.float16,
    FLOAT32: np.float32,
    FLOAT64: np.float64,
    INT32: np.int32,
    BOOL: np.bool_,
    DT.Value("INT8"): np.int8,
    DT.Value("UINT8"): np.uint8,
    DT.Value("INT16"): np.int16,
    DT.Value("UINT16"): np.uint16,
    DT.Value("INT64"): np.int64,
    DT.Value("UINT32"): np.uint32,
}

# Sub-byte integer types (compressed weights): bits per element and signedness. They are stored bit-packed, least
# significant bit first, and read unpacked into int8 (signed) or uint8 arrays.
SUB_BYTE = {
    DT.Value("INT4"): (4, True),
    DT.Value("UINT1"): (1, False),
    DT.Value("UINT2"): (2, False),
    DT.Value("UINT3"): (3, False),
    DT.Value("UINT4"): (4, False),
    DT.Value("UINT6"): (6, False),
}

# The strings the `cast` op takes in its `dtype` input.
CAST_NAMES = {FLOAT16: "fp16", FLOAT32: "fp32", INT32: "int32", BOOL: "bool"}
FROM_CAST_NAME = {v: k for k, v in CAST_NAMES.items()}
FLOATS = (FLOAT16, FLOAT32)


def name(dtype):
    return CAST_NAMES.get(dtype) or DT.Name(dtype).lower()
