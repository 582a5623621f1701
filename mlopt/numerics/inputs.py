"""Random inputs for a MIL function, shaped and typed from its declared inputs.

Unknown dimensions (flexible shapes) take the model description's default shape where it names one, else 2.

A declared shape is a promise the file makes, not memory anyone has: a few bytes of protobuf can declare an
input of 10**12 elements. Shapes are summed as Python ints before anything is allocated, and a function whose
inputs would exceed MAX_ELEMENTS in total raises `InputTooLarge` (no path is known here to name the model file;
the caller reports it).
"""

import math

import numpy as np

from ..graph.dtypes import BOOL, FLOATS, NUMPY

UNKNOWN_DIM = 2
MAX_ELEMENTS = 2**26  # elements of all random inputs of one function together (512 MB as float64)


class InputTooLarge(ValueError):
    """The declared inputs of a function are too large to build random values for."""

    def __init__(self, name, shape, count, total, limit=MAX_ELEMENTS):
        self.name, self.shape, self.count, self.total, self.limit = name, shape, count, total, limit
        super().__init__(
            f"input '{name}' of shape {shape} holds {count} elements; random inputs are limited to {limit} "
            f"elements in total per function ({total} needed so far)"
        )


def tensor_type(value_type):
    """The tensor type of a function input (a state input's wrapped tensor)."""
    if value_type.WhichOneof("type") == "stateType":
        value_type = value_type.stateType.wrappedType
    return value_type.tensorType


def input_shapes(spec, function):
    """{input name: concrete shape} for `function`, from its declared types and the description's defaults."""
    defaults = {}
    for feature in spec.description.input:
        if feature.type.WhichOneof("Type") == "multiArrayType":
            defaults[feature.name] = list(feature.type.multiArrayType.shape)
    shapes = {}
    for inp in function.inputs:
        dims = tensor_type(inp.type).dimensions
        default = defaults.get(inp.name, [])
        shape = []
        for i, d in enumerate(dims):
            if d.WhichOneof("dimension") == "constant":
                shape.append(int(d.constant.size))
            else:
                shape.append(int(default[i]) if i < len(default) and default[i] > 0 else UNKNOWN_DIM)
        shapes[inp.name] = shape
    return shapes


def check_budget(shapes, limit=MAX_ELEMENTS):
    """InputTooLarge unless `shapes` ({name: shape}) hold at most `limit` elements together (Python ints: exact)."""
    total = 0
    for name, shape in shapes.items():
        count = math.prod(shape)
        total += count
        if total > limit:
            raise InputTooLarge(name, shape, count, total, limit)
    return total


def random_inputs(spec, function, rng, scale=1.0):
    """{input name: array}: floats ~ N(0, scale^2) in the declared dtype, ints in [0, 4), bools at random."""
    feeds = {}
    shapes = input_shapes(spec, function)
    check_budget(shapes)  # before anything is allocated
    for inp in function.inputs:
        shape = shapes[inp.name]
        dtype = tensor_type(inp.type).dataType
        if dtype in FLOATS:
            feeds[inp.name] = (rng.standard_normal(shape) * scale).astype(NUMPY[dtype])
        elif dtype == BOOL:
            feeds[inp.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            feeds[inp.name] = rng.integers(0, 4, shape).astype(NUMPY.get(dtype, np.int32))
    return feeds
