"""Attention masks on their way into a softmax: where a mask value goes, and which function inputs are keep/drop
masks.

Two users: the finite_mask rule (rules/finite_mask.py), which follows a `(1 - m) * sentinel` through layout ops to
the adds and softmaxes that read it (`mask_readers`), and the inputs the analyses feed a program
(numerics/inputs.py), which must not feed an attention mask random normals (`keep_drop_inputs`): `(1 - m) * c`
with m ~ N(0, 1) is no mask, and its values overflow fp16 where a 0/1 mask never would.

Both end the same way: a value that reaches, through casts only, the `x` of a softmax (`softmax_after`).
"""

from typing import NamedTuple, Optional, Tuple

import numpy as np

from ..graph.dtypes import BOOL

LAYOUT = ("expand_dims", "reshape", "squeeze", "cast")  # ops between a (1 - m) * sentinel and its add: order kept
# what a mask built from an input may pass through on its way to the scores (values per element, or moved)
MASK_LAYOUT = LAYOUT + ("transpose", "tile", "slice_by_index", "slice_by_size")
ARITHMETIC = ("add", "sub", "mul", "real_div")
COMPARISONS = ("equal", "not_equal", "less", "less_equal", "greater", "greater_equal")
LOGICAL = ("logical_and", "logical_or", "logical_xor")


def softmax_after(graph, value):
    """(the softmax reading `value` as its x through a chain of casts, the casts) when that is the only reader of
    `value` and of each cast, else None."""
    casts, following = [], [u.op for u in graph.consumers(value)]
    while len(following) == 1 and following[0] is not None and graph.op_type(following[0]) == "cast":
        casts.append(following[0])
        following = [u.op for u in graph.consumers(graph.output(following[0]))]
    if len(following) != 1 or following[0] is None or graph.op_type(following[0]) != "softmax":
        return None
    return following[0], casts


def mask_readers(graph, value, limit=4096):
    """Where a (1 - m) * sentinel goes: every path through LAYOUT ops must end in an add whose sum (through casts)
    only a softmax reads - one per attention layer, as transformers shares one extended mask across layers.
    On the way it may be added to one other tensor first (`stacked`: T5 adds the mask to its position bias, and
    every layer adds that sum to its scores). [End], the LAYOUT ops, None) or (.., .., why not)."""
    ends, path, frontier, seen = [], [], [(value, None)], set()
    while frontier and len(seen) < limit:
        current, stacked = frontier.pop()
        for use in graph.consumers(current):
            if use.op is None:
                return [], [], "the product is a model output" if stacked is None else "its sum with another tensor is a model output"
            if id(use.op) in seen:
                continue
            seen.add(id(use.op))
            kind = graph.op_type(use.op)
            if kind in LAYOUT:
                path.append(use.op)
                frontier.append((graph.output(use.op), stacked))
                continue
            if kind != "add":
                return [], [], f"the product is read by {kind}"
            reader = softmax_after(graph, graph.output(use.op))
            if reader is None:
                other = graph.arg(use.op, "y" if use.param == "x" else "x")
                if stacked is not None:
                    return [], [], "it is added to more than one other tensor before a softmax"
                if other is None or other == current:
                    return [], [], "its sum is read by something other than one softmax"
                frontier.append((graph.output(use.op), Stacked(use.op, other, current)))
                continue
            ends.append(End(current, use.op, reader[0], tuple(reader[1]), stacked))
    return ends, path, None if ends else "it reaches no softmax"


class Stacked(NamedTuple):
    """An add on the mask's way to the softmaxes that sums it with another tensor (a position bias, another mask)."""

    add: object
    other: str  # the tensor the mask is added to there
    entry: str  # the mask's value entering that add


class End(NamedTuple):
    """One softmax a mask reaches."""

    value: str  # the mask's value (or its sum with `stacked.other`) at the add into the softmax
    add: object
    softmax: object
    casts: Tuple[object, ...]  # between the add and the softmax
    stacked: Optional[Stacked]


def keep_drop_inputs(graph, inputs):
    """{input: how it reaches a softmax ("sub -> mul -> expand_dims -> add -> softmax")} for the inputs of
    `inputs` the program uses as keep/drop attention masks: an input from which ops with constant other operands
    (casts, layout ops, arithmetic, comparisons, logical ops, selects) build a value that reaches, through casts
    only, the x of a softmax, either
    - as one operand of an add whose other operand is computed (the scores), after a step that makes a keep/drop
      mask additive: `1 - m` or `m - 1`, a comparison, a cast to bool, a logical op or a select on it
      (transformers' `(1.0 - attention_mask) * finfo.min`, AttentionMaskConverter's masked_fill chains); or
    - as the condition of a select between the scores and a fill (`masked_fill` kept as a select).
    An input added to the scores as it is (an additive bias, an ALiBi slope input) is no keep/drop mask."""
    ops = list(graph.ops())
    found = {}
    for name in inputs:
        path = _mask_path(graph, ops, name)
        if path is not None:
            found[name] = " -> ".join(path)
    return found


def _constant(graph, value):
    return value is None or graph.is_constant_expr(value)  # None: an inline literal


def _is_one(graph, op, param):
    value = graph.const(op, param)
    return value is not None and np.size(value) == 1 and float(np.asarray(value, np.float64).reshape(())) == 1.0


def _mask_path(graph, ops, name):
    """The op types from input `name` to the softmax it masks (program order), or None. One pass in program order:
    `derived` holds the values computed from the input by mask-building ops -> (keep/drop step seen, op types)."""
    derived = {name: (False, ())}
    for op in ops:
        kind = graph.op_type(op)
        if kind in MASK_LAYOUT or kind == "logical_not":
            source = graph.arg(op, "x")
            if source in derived:
                marked, path = derived[source]
                to_bool = kind == "cast" and graph.dtype(graph.output(op)) == BOOL
                derived[graph.output(op)] = (marked or to_bool or kind == "logical_not", path + (kind,))
        elif kind in ARITHMETIC or kind in COMPARISONS or kind in LOGICAL:
            x, y = graph.arg(op, "x"), graph.arg(op, "y")
            mine = [v for v in (x, y) if v in derived]
            if not mine:
                continue
            marked, path = max((derived[v] for v in mine), key=lambda d: len(d[1]))
            others = [v for v in (x, y) if v not in derived]
            if all(_constant(graph, v) for v in others):
                step = kind in COMPARISONS or kind in LOGICAL or kind == "sub" and (_is_one(graph, op, "x") or _is_one(graph, op, "y"))
                derived[graph.output(op)] = (marked or step, path + (kind,))
            elif kind == "add" and len(mine) == 1 and marked and softmax_after(graph, graph.output(op)) is not None:
                return path + ("add", "softmax")
        elif kind == "select":
            cond, a, b = graph.arg(op, "cond"), graph.arg(op, "a"), graph.arg(op, "b")
            if cond not in derived:
                continue
            marked, path = max((derived[v] for v in (cond, a, b) if v in derived), key=lambda d: len(d[1]))
            computed = [v for v in (a, b) if v not in derived and not _constant(graph, v)]
            if not computed:
                derived[graph.output(op)] = (True, path + ("select",))
            elif len(computed) == 1 and softmax_after(graph, graph.output(op)) is not None:
                return derived[cond][1] + ("select", "softmax")
    return None
