"""finite_mask's shared masks: one mask value that several attention layers read, found once.

A BERT computes its extended attention mask once and every layer adds it to its scores; a converted decoder holds
one causal-mask constant (or one `select` computing the mask from the input) that every layer's softmax reads.
Rewriting such a mask per layer would give each layer its own copy; this module finds where the mask stops being
one value (`shared_point`: below it, every layer's path is its own) and every layer that reads it (`mask_readers`),
so the rule rewrites the value once, there, and judges the rewrite at every softmax it reaches.

The walk ends in per-layer chains `[casts ->] add|select [-> casts] -> softmax`; if anything else reads the mask
(a model output, an op that is no such combine), the mask is not treated as shared and each layer's chain is
rewritten on its own, as before, so that other reader keeps the original value.
"""

from dataclasses import dataclass
from typing import Optional, Tuple

from ..patterns.attention_mask import softmax_after

CAST = "cast"


@dataclass
class MaskReader:
    """One layer's use of a shared mask: `combine` (an add, or a select between the scores and the mask) reads the
    mask as `at`, after this layer's own `casts`; its result reaches `softmax` through `out_casts`."""

    at: str
    casts: Tuple[object, ...]
    combine: object
    x: str  # the scores the mask is combined with
    side: str  # "add", "a" (select(cond, mask, x)) or "b" (select(cond, x, mask))
    cond: Optional[str]
    softmax: object
    out_casts: Tuple[object, ...]

    def ops(self):
        return (*self.casts, self.combine, *self.out_casts, self.softmax)


def shared_point(graph, root):
    """(the deepest value of `root`'s cast chain that every reader still reads, the casts down to it): a cast that is
    its value's only reader is part of the shared path (coremltools casts a float32 mask to fp16 once)."""
    value, casts, seen = root, [], set()
    while value not in seen:
        seen.add(value)
        uses = graph.consumers(value)
        if len(uses) != 1 or uses[0].op is None or graph.op_type(uses[0].op) != CAST:
            break
        casts.append(uses[0].op)
        value = graph.output(uses[0].op)
    return value, tuple(casts)


def mask_readers(graph, point, adds_only=False, limit=4096):
    """Every layer reading `point` (through its own casts) as the mask of an add or select whose result, through
    casts, only a softmax reads: [MaskReader], in program order of the softmaxes; None when anything else reads it
    (then the mask is not shared by softmaxes alone). `adds_only`: only adds combine (a mask computed by a select)."""
    found, frontier, casts_to, seen = [], [point], {point: ()}, set()
    while frontier:
        value = frontier.pop()
        for use in graph.consumers(value):
            if use.op is None or len(seen) >= limit:
                return None
            if id(use.op) in seen:
                continue
            seen.add(id(use.op))
            kind = graph.op_type(use.op)
            if kind == CAST:
                casts_to[graph.output(use.op)] = casts_to[value] + (use.op,)
                frontier.append(graph.output(use.op))
                continue
            reader = _reader(graph, use, value, casts_to[value], adds_only)
            if reader is None:
                return None
            found.append(reader)
    return sorted(found, key=lambda r: graph.position(r.softmax))


def _reader(graph, use, value, casts, adds_only):
    op, kind = use.op, graph.op_type(use.op)
    if kind == "add" and use.param in ("x", "y"):
        x, side, cond = graph.arg(op, "y" if use.param == "x" else "x"), "add", None
    elif kind == "select" and use.param in ("a", "b") and not adds_only:
        x, side, cond = graph.arg(op, "b" if use.param == "a" else "a"), use.param, graph.arg(op, "cond")
    else:
        return None
    if x is None or x == value or graph.is_constant_expr(x):
        return None
    after = softmax_after(graph, graph.output(op))
    if after is None:
        return None
    return MaskReader(value, casts, op, x, side, cond, after[0], tuple(after[1]))
