"""Walking a FunctionView across `cast` ops, which mixed-precision conversion sprinkles on any edge of a chain.

Upwards, a value's cast ancestry is the value and every value it was cast from. Downwards, `follow` finds the op a
chain continues with, looking through casts, and returns the casts it crossed so they become part of the chain.
"""

from dataclasses import dataclass

from ..graph.dtypes import FLOAT16, FLOAT32


@dataclass
class Step:
    op: object  # the op found
    via: str  # the value through which it consumes the chain (after the casts)
    param: str  # the input parameter bound to `via`
    casts: list  # cast ops crossed on the way, in order


def cast_ancestry(view, value):
    """[value, the value it was cast from, ...], up to the first value not produced by a cast."""
    chain = [value]
    op = view.producer.get(value)
    while op is not None and op.type == "cast":
        value = view.arg(op, "x")
        if value is None:
            break
        chain.append(value)
        op = view.producer.get(value)
    return chain


def casts_between(view, start, end):
    """The cast ops from `end` down to `start` (start is in end's downstream cast chain)."""
    casts = []
    value = start
    while value != end:
        op = view.producer[value]
        casts.append(op)
        value = view.arg(op, "x")
    return casts


def is_widening(view, cast_op):
    """A cast that loses nothing: fp16 -> fp32 (or a no-op cast)."""
    src, dst = view.dtype(view.arg(cast_op, "x")), view.dtype(cast_op.outputs[0].name)
    return src == dst or (src == FLOAT16 and dst == FLOAT32)


def follow(view, value, types, accept=None):
    """First consumer of `value` (looking through casts) whose type is in `types` and that `accept(step)` allows."""
    frontier = [(value, [])]
    while frontier:
        current, casts = frontier.pop(0)
        for use in view.consumers(current):
            op = use.op
            if op is None:
                continue
            if op.type == "cast" and use.param == "x":
                frontier.append((op.outputs[0].name, casts + [op]))
            elif op.type in types:
                step = Step(op, current, use.param, casts)
                if accept is None or accept(step):
                    return step
    return None


def sole_consumer(view, value):
    """The single op using `value` (None if the value has several uses or is a block/function output)."""
    uses = view.consumers(value)
    if len(uses) == 1 and uses[0].op is not None:
        return uses[0]
    return None


def other_param(op, param):
    """For a binary op (x, y), the parameter that is not `param`."""
    return "y" if param == "x" else "x"
