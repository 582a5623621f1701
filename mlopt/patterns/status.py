"""What trying a rule at one anchor op found, as a type: callers branch on the class, never on reason strings.

- `NotThisPattern`: the anchor does not start this rule's pattern at all (a reduce_mean of a plain tensor for
  RMSNorm). Not a candidate: reports do not list it.
- `Matched`: every condition holds; `match` says what the rewrite needs.
- `ConditionFailed`: the shape of the pattern is there, a condition is not ("power is 3, not 2"). Listed as left
  alone with the reason.
- `Recognised`: a known spelling the rule deliberately leaves alone (an overflow-safe L2 form, a chain already
  rewritten). Listed as left alone, with what it is.

The three statuses that are candidates carry the trace of the attempt: the chain's printed form and the names of
the ops walked (patterns/trace.py).
"""

from dataclasses import dataclass
from typing import Optional, Tuple


@dataclass(frozen=True)
class NotThisPattern:
    pass


NOT_THIS_PATTERN = NotThisPattern()


@dataclass
class Matched:
    match: object  # the rule's Match (rules/base.py)
    form: str
    ops: Tuple[str, ...]


@dataclass
class ConditionFailed:
    reason: str
    form: str
    ops: Tuple[str, ...]


@dataclass
class Recognised:
    kind: str  # what it is, e.g. "RMSNorm (L2 form)"
    reason: str  # why it is left alone, e.g. "already stable on the Neural Engine: ..."
    form: str
    ops: Tuple[str, ...]


Status = (NotThisPattern, Matched, ConditionFailed, Recognised)


@dataclass
class Candidate:
    """A chain some rule recognised at `anchor`: matched, or left alone with the reason."""

    rule: object  # the Rule (rules/base.py)
    function: str
    anchor: str  # the anchor op's name
    status: object  # Matched | ConditionFailed | Recognised

    @property
    def form(self) -> str:
        return self.status.form

    @property
    def ops(self) -> Tuple[str, ...]:
        return self.status.ops

    @property
    def match(self):
        return self.status.match if isinstance(self.status, Matched) else None

    @property
    def reason(self) -> Optional[str]:
        if isinstance(self.status, Recognised):
            return f"{self.status.kind}: {self.status.reason}"
        return getattr(self.status, "reason", None)
