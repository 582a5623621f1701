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
from ..graph.spec_graph import SpecGraph
from ..patterns.attention_mask import keep_drop_inputs

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


def input_tensor(value_type):
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
        dims = input_tensor(inp.type).dimensions
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


def random_inputs(spec, function, rng, scale=1.0, with_ranges=False, view=None):
    """{input name: array}: floats ~ N(0, scale^2) in the declared dtype, bools at random, integers in
    [0, vocabulary) where they index an embedding (see `index_ranges`), else in [0, 4); an input the program uses
    as a keep/drop attention mask (patterns/attention_mask.py), whatever its dtype, from {0, 1} (`mask_draw`).
    With `with_ranges`, also {input name: how it was drawn} for the inputs `scale` does not apply to."""
    feeds, notes = {}, {}
    shapes = input_shapes(spec, function)
    check_budget(shapes)  # before anything is allocated
    if view is None:
        view = SpecGraph("", function)
    ranges = index_ranges(view)
    masks = keep_drop_inputs(view, [inp.name for inp in function.inputs])
    for inp in function.inputs:
        shape = shapes[inp.name]
        dtype = input_tensor(inp.type).dataType
        if inp.name in masks:
            feeds[inp.name] = mask_draw(rng, shape).astype(bool if dtype == BOOL else NUMPY.get(dtype, np.int32))
            notes[inp.name] = (f"a keep/drop attention mask ({masks[inp.name]}): drawn from {{0, 1}}, every row "
                               f"(last axis) holding both (--scale does not apply)")
        elif dtype in FLOATS:
            feeds[inp.name] = (rng.standard_normal(shape) * scale).astype(NUMPY[dtype])
        elif dtype == BOOL:
            feeds[inp.name] = rng.integers(0, 2, shape).astype(bool)
            notes[inp.name] = "booleans, drawn at random (--scale does not apply)"
        else:
            high, source = ranges.get(inp.name, (DEFAULT_INT_HIGH, None))
            feeds[inp.name] = rng.integers(0, high, shape).astype(NUMPY.get(dtype, np.int32))
            drawn = f"the size of the axis {source} indexes" if source else "no embedding it indexes was found"
            notes[inp.name] = f"integers, drawn from [0, {high}) ({drawn}; --scale does not apply)"
    return (feeds, notes) if with_ranges else feeds


DEFAULT_INT_HIGH = 4


def mask_draw(rng, shape):
    """0s and 1s at random, each row along the last axis holding both at least once (a row of one element: 1).

    A real attention mask keeps at least one element of every row - a sequence holds at least one token - and a
    row masked entirely is a case of its own (a padded query: docs/audit.md). Which value keeps depends on the
    model (transformers: 1 keeps; other code passes the inverse), so a row holds both: whichever keeps, at least
    one element is kept and at least one dropped, and the mask is exercised."""
    values = rng.integers(0, 2, shape)
    if not values.size or not len(shape):
        return values
    rows = values.reshape(-1, shape[-1])
    n = rows.shape[1]
    if n == 1:
        rows[:] = 1
        return values
    index = np.arange(rows.shape[0])
    one = rng.integers(0, n, rows.shape[0])
    zero = (one + rng.integers(1, n, rows.shape[0])) % n
    rows[index, one], rows[index, zero] = 1, 0
    return values


INDEX_HOPS = 8  # ops between an integer input and the gather it indexes (casts, the negative-index select, ...)


def index_ranges(view):
    """{integer input: (size, "of 'x' that gather 'op'")} for inputs that reach the `indices` of a gather within
    INDEX_HOPS integer ops (converters cast token ids and wrap negative ones with greater_equal/add/select before
    the gather): random ids must stay below the vocabulary size of the embedding they index."""
    ranges = {}
    for inp in view.function.inputs:
        frontier, seen = [inp.name], {inp.name}
        for _ in range(INDEX_HOPS):
            following = []
            for value in frontier:
                for use in view.consumers(value):
                    op = use.op
                    if op is None:
                        continue
                    if op.type in ("gather", "gather_along_axis") and use.param == "indices":
                        found = _gathered_axis(view, op)
                        if found and inp.name not in ranges:
                            ranges[inp.name] = found
                        continue
                    for out in op.outputs:
                        vt = view.types.get(out.name)
                        integer = vt is not None and vt.WhichOneof("type") == "tensorType" and vt.tensorType.dataType not in FLOATS
                        if integer and out.name not in seen:
                            seen.add(out.name)
                            following.append(out.name)
            frontier = following
    return ranges


def _gathered_axis(view, op):
    """(size of the axis `op` gathers along, its description), or None if unknown."""
    axis = view.const(op, "axis")
    axis = int(axis.reshape(-1)[0]) if axis is not None and axis.size == 1 else 0
    source = view.arg(op, "x")
    if source is None or source not in view.types or view.types[source].WhichOneof("type") != "tensorType":
        return None
    rank = view.rank(source)
    size = view.dim(source, axis % rank) if rank and -rank <= axis < rank else None
    return (size, f"of '{source}' that gather '{view.op_name(op)}'") if size else None
