"""finite_bounds: an infinite clip/maximum/minimum bound of an fp16 program made +-65504, fp16's largest finite
value (exact in fp16).

`clip(x, -inf, 6)`, `maximum(x, -inf)` and `minimum(x, +inf)` (a bound fp16 turns into infinity: +-inf itself, or
float32's +-3.4e38 from `torch.finfo`, or anything beyond +-65520) give the same result for every finite fp16 x
when the bound is +-65504 instead; they differ only where x is itself infinite, which the finite bound turns back
into a finite value. It is a companion of finite_mask (mlopt/rules/finite_mask.py): the two rewrite the constants
through which infinities enter an fp16 program. A rule of its own because its replacement (an op with literal
bounds) has other parameters than the mask's.
"""

from ..graph.dtypes import FLOAT16
from ..patterns.status import NOT_THIS_PATTERN
from ..patterns.trace import attempt
from ..patterns.walk import scalar_const
from .base import REGION, Match, Rule
from .finite_mask_pattern import FP16_MAX, infinite_bound

BOUNDS = {"clip": ("alpha", "beta"), "maximum": ("y", "x"), "minimum": ("y", "x")}


class FiniteBoundsRule(Rule):
    name = "finite_bounds"
    title = "InfiniteBound"
    description = "clip/maximum/minimum with a bound fp16 cannot hold -> the bound +-65504"
    looks_for = "clip, maximum or minimum with an infinite bound"
    anchors = tuple(BOUNDS)
    params = ("low", "high")
    proof = REGION
    magnitudes = (1e-2, 1.0, 1e4)
    units = None  # only a literal changes

    def match(self, graph, op):
        kind = graph.op_type(op)
        if kind == "clip":
            x = graph.arg(op, "x")
            low, high = graph.const(op, "alpha"), graph.const(op, "beta")
            if x is None or low is None or high is None or low.size != 1 or high.size != 1:
                return NOT_THIS_PATTERN
            low, high = float(low.reshape(())), float(high.reshape(()))
        else:
            found = [(graph.arg(op, other), scalar_const(graph, op, param)) for param, other in (("y", "x"), ("x", "y"))]
            found = [(x, bound) for x, bound in found if bound is not None and x is not None]
            if len(found) != 1:
                return NOT_THIS_PATTERN
            x, bound = found[0]
            low, high = (bound, float("inf")) if kind == "maximum" else (float("-inf"), bound)
        new_low, new_high = infinite_bound(low), infinite_bound(high)
        if kind == "maximum":
            new_high = None
        if kind == "minimum":
            new_low = None
        if (new_low is None and new_high is None) or graph.dtype(graph.output(op)) != FLOAT16:
            return NOT_THIS_PATTERN  # finite bounds, or an fp32 op, where an infinite bound is exact

        def body(trace):
            trace.take(op)
            params = {"low": new_low if new_low is not None else low, "high": new_high if new_high is not None else high}
            return Match(x=x, axes=(), output=graph.output(op), output_op=op, ops=trace.op_names(), dtype=graph.dtype(x),
                         params=params, facts={"kind": kind},
                         note=f"{kind} bound(s) beyond fp16's range made +-{FP16_MAX:g}")

        return attempt(graph, body)

    def lower(self, b, m):
        low, high = float(m.params["low"]), float(m.params["high"])
        if abs(high) > FP16_MAX:  # a maximum: no upper bound
            return b.elementwise("maximum", m.x, y=low)
        if abs(low) > FP16_MAX:  # a minimum: no lower bound
            return b.elementwise("minimum", m.x, y=high)
        return b.elementwise("clip", m.x, alpha=low, beta=high)

    def summary(self, match):
        return f"{match.facts.get('kind', 'clip')} to [{match.params['low']:g}, {match.params['high']:g}]"


RULE = FiniteBoundsRule()
