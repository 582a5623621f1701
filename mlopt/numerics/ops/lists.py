"""Tensor-list ops (make_list, list_read/write/gather/scatter/length), as while_loop bodies of converted
TensorFlow/PyTorch loops use them (a Keras LSTM converted by coremltools reads its input steps from one list
and writes its output steps into another).

A list value is a `TensorList`: its length, the elements written so far (by index) and the element shape.
`make_list`'s `elem_shape` is a tuple whose entries are sizes or names: a name (coremltools writes the symbol,
e.g. "is0", when TensorFlow left that size unknown) is a size known only at run time, fixed by the first element
written. An element never written reads as zeros (MIL leaves it undefined), which needs its shape: from the
element shape if it holds no name, else from the elements written; a list of unknown element shape that was
never written cannot be read, and says so.

Values are immutable: every op returns a new list (a loop's earlier state must not change when a later
iteration writes). Memory stays bounded whatever a program says: only written elements are held, and a list
holding more than MAX_LIST_BYTES stops the run with an error naming the sizes.
"""

import numpy as np

from .registry import implementation, numpy_dtype, scalar

MAX_LIST_BYTES = 2**30  # the interpreter's budget for the values a run holds at once (interpreter.MAX_LIVE_BYTES)


class TensorList:
    """A MIL list: `length` elements of dtype `dtype` and shape `shape` (a tuple whose entries are ints, or None
    where only run time tells); `items` holds the written ones by index."""

    __slots__ = ("length", "items", "shape", "dtype", "nbytes")

    def __init__(self, length, shape, dtype, items=None):
        self.length, self.shape, self.dtype = length, shape, np.dtype(dtype)
        self.items = dict(items or {})
        self.nbytes = sum(v.nbytes for v in self.items.values())

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        return self.read(index)

    def _position(self, index, writing=False):
        i = int(index)
        if i < 0:
            i += self.length
        if i < 0 or (i >= self.length and not writing):
            raise IndexError(f"index {int(index)} of a list of {self.length} elements")
        return i

    def element_shape(self):
        """The element shape with every size known: from `shape`, or from an element written; None if neither."""
        if self.shape is not None and None not in self.shape:
            return self.shape
        for value in self.items.values():
            return value.shape
        return None

    def read(self, index):
        i = self._position(index)
        if i in self.items:
            return self.items[i]
        shape = self.element_shape()
        if shape is None:
            raise ValueError(
                f"element {i} was never written and the element shape {_shape_text(self.shape)} holds sizes "
                "known only at run time, fixed by a write"
            )
        return np.zeros(shape, self.dtype)

    def written(self, positions, values):
        """A new list with `values` at `positions`; writing past the end grows it."""
        out = TensorList(self.length, self.shape, self.dtype, self.items)
        for index, value in zip(positions, values):
            value = np.asarray(value)
            known = out.element_shape()
            expected = known if known is not None else self.shape
            if expected is not None and (
                len(expected) != value.ndim or any(e is not None and e != n for e, n in zip(expected, value.shape))
            ):
                raise ValueError(f"writes an element of shape {list(value.shape)} into a list of {_shape_text(expected)}")
            i = out._position(index, writing=True)
            out.length = max(out.length, i + 1)
            out.nbytes += value.nbytes - (out.items[i].nbytes if i in out.items else 0)
            out.items[i] = value
            if out.nbytes > MAX_LIST_BYTES:
                raise ValueError(f"the list would hold {out.nbytes} bytes, more than the budget of {MAX_LIST_BYTES}")
        return out


def _shape_text(shape):
    return "unknown shape" if shape is None else "[" + ", ".join("?" if s is None else str(s) for s in shape) + "]"


def _sizes(elem_shape):
    """make_list's elem_shape as a tuple of ints and None: a tuple input whose entries are int sizes, int vectors
    (a shape given as one tensor) or names (strings: a symbolic size)."""
    if elem_shape is None:
        return None
    sizes = []
    for entry in elem_shape if isinstance(elem_shape, list) else [elem_shape]:
        for s in np.asarray(entry).reshape(-1):
            sizes.append(None if isinstance(s, (str, np.str_, bytes)) else int(s))
    return tuple(sizes)


@implementation("make_list")
def make_list(elem_shape=None, dtype="fp32", init_length=1, dynamic_length=True, **_):
    length = int(scalar(init_length))
    if length < 0:
        raise ValueError(f"init_length {length} is negative")
    return TensorList(length, _sizes(elem_shape), numpy_dtype(dtype))


@implementation("list_write")
def list_write(ls, index, value, **_):
    return ls.written([scalar(index)], [value])


@implementation("list_scatter")
def list_scatter(ls, indices, value, **_):
    return ls.written(np.asarray(indices).reshape(-1), list(np.asarray(value)))


@implementation("list_read")
def list_read(ls, index, **_):
    return ls.read(scalar(index))


@implementation("list_gather")
def list_gather(ls, indices, **_):
    indices = np.asarray(indices).reshape(-1)
    if indices.size == 0:
        shape = ls.element_shape()
        if shape is None:
            raise ValueError(f"gathers no element from a list of {_shape_text(ls.shape)}")
        return np.zeros((0, *shape), ls.dtype)
    return np.stack([ls.read(i) for i in indices])


@implementation("list_length")
def list_length(ls, **_):
    return np.int32(len(ls))
