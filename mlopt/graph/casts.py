"""Following a value up through `cast` ops, on any graph/interface.py adapter.

Patterns use it to see through the casts mixed precision puts on any edge of a chain; the self-check uses it to
find the tensor to feed a chain with. A cycle of casts (possible only in a graph no validator saw) ends the walk.
"""


def cast_ancestry(view, value):
    """[value, the value it was cast from, ...], up to the first value not produced by a cast."""
    chain, seen = [value], {value}
    op = view.producer(value) if value is not None else None
    while op is not None and view.op_type(op) == "cast":
        value = view.arg(op, "x")
        if value is None or value in seen:
            break
        chain.append(value)
        seen.add(value)
        op = view.producer(value)
    return chain
