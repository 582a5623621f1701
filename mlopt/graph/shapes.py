"""Questions about declared shapes, on any graph/interface.py adapter: patterns ask them to check a chain keeps
its rows, the self-check to decide how it may feed a chain."""


def same_shape(view, a, b):
    """Whether two values declare one shape (unknown sizes equal only to unknown ones)."""
    return view.rank(a) == view.rank(b) and all(view.dim(a, i) == view.dim(b, i) for i in range(view.rank(a)))


def varies_off(view, value, rank, axes):
    """Whether `value`, aligned to rank `rank` by its trailing axes, is other than 1 along an axis not in `axes`:
    per-row data, where rows lie along the axes a norm does not mix over."""
    r = view.rank(value)
    return any(view.dim(value, i) != 1 and (i + rank - r) not in axes for i in range(r))
