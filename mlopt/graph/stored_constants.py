"""Constants a program keeps in weight files, as the graph layer reads them: checked before anything is computed,
decoded whole when small, streamed through a bounded window when large.

The weight-file format is package I/O (package/weights.py); which `Value`s of a program are stored there, their
dtypes and shapes, is the program's: this module joins the two. Patterns see stored constants through
`SpecGraph.const_value` (small ones, whole) and `SpecGraph.const_chunks` (any size, WINDOW elements at a time).
"""

import math

import numpy as np

from ..package.weights import blob_values
from .dtypes import NUMPY, SUB_BYTE
from .values import tensor_shape

SMALL_CONSTANT = 4096  # elements: a weight-file constant patterns read whole (a 1/N or eps tensor, not a weight)
WINDOW = 1 << 16  # elements of a large stored constant in memory at once when a pattern streams it


def check_blob_references(spec, blobs):
    """Check every blob a program refers to (file inside the package, header, sentinel, dtype, size) before
    anything is computed: a truncated or corrupt weight file is bad input even where no chain reads it."""
    for function in spec.mlProgram.functions.values():
        for value in blob_values(function):
            tensor = value.type.tensorType
            static = all(d.WhichOneof("dimension") == "constant" for d in tensor.dimensions)
            shape = [d.constant.size for d in tensor.dimensions] if static else []
            packed = np.uint8 if tensor.dataType in SUB_BYTE else None  # check() sizes it by the blob's bits
            blob = value.blobFileValue
            blobs.check(blob.fileName, blob.offset, (NUMPY.get(tensor.dataType) or packed) if static else None, shape)


class StoredConstants:
    """How a SpecGraph reads its weight-file constants from `blobs` (a BlobReader, or None: none are read)."""

    def __init__(self, blobs, small=SMALL_CONSTANT, window=WINDOW):
        self.blobs, self.small_limit, self.window = blobs, small, window

    def _layout(self, value):
        if self.blobs is None or value.type.WhichOneof("type") != "tensorType":
            return None
        shape, np_dtype = tensor_shape(value.type), NUMPY.get(value.type.tensorType.dataType)
        return None if shape is None or np_dtype is None else (shape, np_dtype)

    def small(self, value):
        """The values of a stored constant (a MIL `Value`) of at most `small_limit` elements; None for larger
        ones, unknown dtypes or shapes, or without a weight file."""
        layout = self._layout(value)
        if layout is None or math.prod(layout[0]) > self.small_limit:
            return None
        blob = value.blobFileValue
        return self.blobs.read(blob.fileName, blob.offset, layout[1], layout[0], copy=True)

    def chunks(self, value, window=None):
        """The flat elements of a stored constant of any size, `window` elements at a time (a generator), or
        None when it cannot be read (see `small`)."""
        layout = self._layout(value)
        if layout is None:
            return None
        shape, np_dtype = layout
        window, blob, total = max(1, window or self.window), value.blobFileValue, math.prod(shape)
        return (self.blobs.read_window(blob.fileName, blob.offset, np_dtype, shape, start, window)
                for start in range(0, total, window))
