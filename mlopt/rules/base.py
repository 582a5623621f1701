"""What a rule is: a pattern, a condition, a replacement and the formula that proves it, declared once.

A rule (like onnxscript's `RewriteRule`: target pattern, condition, replacement) names the op types it anchors
at and implements:

- `match(graph, op)`: the pattern and its conditions, on any adapter of graph/interface.py. Returns a status
  (patterns/status.py): Matched with a `Match`, ConditionFailed or Recognised with the reason, or
  NOT_THIS_PATTERN. Write it with `patterns.trace.attempt`, so every op walked is recorded.
- `lower(builder, fused)`: the replacement, written once against the builder contract (rewrites/builder.py).
  Two builders implement it: protobuf ops for saved specs, `mb` calls inside coremltools' pass pipeline. It
  returns the value that replaces the chain's output; the caller casts it to the output's dtype if it differs
  and gives it the output's name. A match that replaces several values at once (`Match.sites`: scaling a
  residual stream changes ops all along it) is lowered once per site, `fused.site` telling which; each lowering
  returns the value replacing that site's op output and is spliced where that op stood.
  `lower` may return a constant (the chain becomes a `const`). A lowering that cannot be built raises
  `LoweringFailed` (or any ValueError): the chain is left alone with that reason, never an internal error.
- `reference(x, operands, axes, params)`: the float64 meaning of the replacement. The proof compares the
  rewritten chain with it; the fused op of the conversion-time passes uses it as its value inference. A rule
  that leaves it out is proved against the original chain evaluated in float64 (region and exact proofs).
- `as_read(match, x, operands)`: what the original chain computes as the matcher read it, in float64. The
  self-check compares the original chain with it before trusting the match; it differs from `reference` only
  when the rewrite deliberately changes the arithmetic (and `Match.note` says how).
- `summary(match)` and `report_fields(match)`: what the report prints and what JSON carries about a match.

And declares, as class attributes (docs/writing-a-rule.md has the whole contract):

- `param_types`: each literal parameter's type, FLOAT (x's dtype; the default), EPSILON (the opset's epsilon
  dtype rule: fp32 under fp16 x from iOS17 where fp16 would change it) or INT (int32).
- `output_shape(x_shape, operand_shapes, axes, params)`: the fused op's output shape at conversion time; the
  default (None) is x broadcast with its operands, right for elementwise and normalising rules.
- `proof`: how the engine proves a rewrite before keeping it (numerics/proofs.py): ROWS (the row self-check:
  rows independent along the axes not in `axes`, fed at `magnitudes`), REGION (the whole chain evaluated at its
  declared shape, with the program's real constants, on inputs at `magnitudes`) or EXACT (as REGION, and the
  rewrite in float64 must equal the original in float64: for rewrites of constant values that keep the
  arithmetic, such as splitting or power-of-two scaling of a weight). A match of an EXACT rule may name
  ROUNDED for itself (`Match.proof`: a constant the rewrite changed had to be rounded): the float64 comparison
  then allows the dtype's tolerance.
- `operand_budget`: the most elements of one input the proof builds, or of one operand it computes in memory.
- `lookalikes`: op types that look like what the rule rewrites but are not, each with why (the no-candidate note).
- `separable_output`: True when the replacement ends in a `concat` of parts, each exact on its own, that the
  function may return as separate outputs when the user asks (`optimize --split-outputs`,
  rewrites/output_parts.py: the only rewrite that changes a function's interface); `part_text(match, begin, end,
  total)` words what a part holds in the model description.

Everything else - the engine, the proofs, report, `inspect`, `--only/--skip`, provenance, the conversion-time
passes - iterates over a rule set (a tuple of rules; the registry of rules/__init__.py by default) and never names
a rule.
"""

from dataclasses import dataclass, field, replace
from typing import Optional, Tuple

from ..compute_units import REWRITING_UNITS
from ..rewrites.builder import LoweringFailed  # noqa: F401  (re-exported: what a rule's `lower` raises)

FLOAT, EPSILON, INT = "float", "epsilon", "int"  # literal parameter types (`param_types`)
ROWS, REGION, EXACT, ROUNDED = "rows", "region", "exact", "rounded"  # proofs (`proof`; ROUNDED: `Match.proof`)


@dataclass
class Match:
    """What the rewrite needs to know about one matched chain."""

    x: str  # the tensor the chain reads, outside any cast wrapper
    axes: Tuple[int, ...]  # non-negative axes the result mixes over; slices along the others are independent
    output: str  # the value the chain defines; the rewrite keeps its name and type
    output_op: object  # the op producing `output`
    ops: Tuple[str, ...]  # names of the ops the chain covers (removed if nothing else uses them)
    dtype: int  # compute dtype of the replacement: x's dtype
    operands: dict = field(default_factory=dict)  # the rule's optional tensor operands: name -> value or None
    params: dict = field(default_factory=dict)  # the rule's literal parameters besides axes (epsilon, ...)
    facts: dict = field(default_factory=dict)  # what only the rule reads back (how the chain spelled itself)
    note: Optional[str] = None  # what the rewrite changes beyond the arithmetic, for the report
    judged_at: object = None  # REGION/EXACT: the value (or tuple of values) the proof compares, when the rewrite's
    # effect shows only downstream of `output` (a mask constant judged at its softmax, a scaled residual stream at
    # every norm reading it: ops up to them are in `ops`); None: output
    binary: Tuple[str, ...] = ()  # REGION/EXACT: values the proof feeds from {0, 1} instead of random normals (an
    # attention mask's keep/drop input); the rule's note must name this assumption
    sites: Tuple["Site", ...] = ()  # several values replaced at once: one lowering per site (`Fused.site`), each
    # spliced where its op stood; the first site's op is `output_op`, and `output` is what the report names (the
    # rule's choice: the last value of a stream). Empty: `output_op` alone
    proof: Optional[str] = None  # ROUNDED where the rule's proof is EXACT but this rewrite rounds a constant
    readings: dict = field(default_factory=dict)  # judged value -> Reading: what a rule's `reference` (and
    # `as_read`) reads at that value when the match is judged at several (a mask shared by every layer, judged at each
    # layer's softmax with that layer's scores as x). Every judged value needs one then; empty: one judged value,
    # read through the match's own x/operands/axes/params

    def fused(self, site=None):
        return Fused(self.x, dict(self.operands), tuple(self.axes), dict(self.params), self.dtype, site)

    def read_at(self, value):
        """The match as the reference reads it at judged value `value`: its Reading there, else the match itself."""
        reading = self.readings.get(value)
        if reading is None:
            return self
        return replace(self, x=reading.x, operands=dict(reading.operands), axes=tuple(reading.axes), params=dict(reading.params))

    def replaced(self):
        """The sites the rewrite replaces, in order: `sites`, or `output_op` alone."""
        return self.sites or (Site(self.output_op),)

    def judged(self):
        """The values the REGION/EXACT proof compares: `judged_at` (one value or several), else `output`."""
        if self.judged_at is None:
            return (self.output,)
        return (self.judged_at,) if isinstance(self.judged_at, str) else tuple(self.judged_at)


@dataclass
class Reading:
    """What the float64 reference reads at one judged value of a match judged at several (`Match.readings`): that
    value's own x, operands (name -> value), axes and literal parameters."""

    x: str
    operands: dict
    axes: Tuple[int, ...]
    params: dict


@dataclass
class Site:
    """One op whose output a multi-site rewrite replaces, and what the rule's `lower` reads to rebuild it."""

    op: object
    data: dict = field(default_factory=dict)


@dataclass
class Fused:
    """What a replacement is built from: the match, or the fused op of the conversion-time passes. Values are
    builder handles (names for saved specs, pymil Vars in the pass pipeline)."""

    x: object
    operands: dict
    axes: Tuple[int, ...]
    params: dict
    dtype: int
    site: Optional[Site] = None  # a multi-site match: the site being lowered (rules/base.Match.sites)


class Rule:
    name = None  # "rms_norm": --only/--skip, provenance ("com.github.mlopt.<name>_rewrites"), pass names
    title = None  # "RMSNorm": what `inspect` calls a match
    anchors = ()  # op types a match is anchored at
    operands = ()  # optional tensor operands of the fused op besides x, e.g. ("gamma",)
    params = ()  # literal parameters of the fused op besides axes, e.g. ("epsilon",)
    param_types = {}  # param name -> FLOAT (default), EPSILON or INT
    proof = ROWS  # ROWS, REGION or EXACT
    magnitudes = (1e-2, 1.0)  # scales of the random inputs the proof feeds
    operand_budget = None  # elements of any one input the proof builds or operand it computes; None: the
    # proofs' default (numerics/selfcheck.BUDGET, 2**20)
    axes_name = "mixed"  # how the proof's messages call the axes a match mixes over ("normalised")
    lookalikes = {}  # op type -> why it is not what the rule rewrites (named when a function has no candidate)
    units = REWRITING_UNITS  # compute units the rewrite pays for; None: every setting
    units_reason = None  # why it does not rewrite with other units (report note)
    description = None  # one line on what it rewrites (the fused op's docstring at conversion time)
    saved_programs_only = False  # True: no conversion-time passes (a match with several sites is no fused op)
    looks_for = None  # what its anchors look like, for a function without candidates: "reduce_mean of a square"
    separable_output = False  # its replacement is a concat whose parts may become separate outputs (--split-outputs)

    def match(self, graph, op):
        raise NotImplementedError

    def lower(self, builder, fused):
        raise NotImplementedError

    reference = None  # def reference(self, x, operands, axes, params): the float64 meaning (see above)

    def output_shape(self, x_shape, operand_shapes, axes, params):
        """The fused op's output shape (conversion time); None: x broadcast with its operands."""
        return None

    def param_type(self, name):
        return self.param_types.get(name, FLOAT)

    def as_read(self, match, x, operands):
        """What the original chain computes as the matcher read it, in float64; None: not checked separately."""
        return None if self.reference is None else self.reference(x, operands, match.axes, match.params)

    def summary(self, match):
        """The report's reading of a match: "axes 2, epsilon 1e-05"."""
        params = "".join(f", {k} {v:.3g}" for k, v in match.params.items() if isinstance(v, (int, float)))
        return f"axes {','.join(map(str, match.axes))}{params}"

    def report_fields(self, match):
        """JSON fields of a match besides x/output/dtype and the operands: axes and the literal parameters."""
        return {"axes": list(match.axes), **match.params}

    def part_text(self, match, begin, end, total):
        """What one part of a separable output holds, for the model description: "elements 0 to 15999 of 32000"."""
        return f"elements {begin} to {end - 1} of {total}"

    def accumulation_note(self, graph, anchor, match):
        """What `verify --accumulate fp16` should tell about this match (where it overflows), or None."""
        return None

    @property
    def looks_for_text(self):
        return self.looks_for or f"{self.title} chain"

    @property
    def units_reason_text(self):
        return self.units_reason or f"the {self.name} rule rewrites only with {', '.join(self.units)}"

    def applies(self, compute_units):
        return self.units is None or compute_units in self.units

    def __repr__(self):
        return f"<rule {self.name}>"
