"""Tracing a match attempt: which ops it walked through, and why it stopped.

A matcher records each op it accepts with `Trace.take`; `Trace.fail` aborts the attempt with a reason a user can
act on ("power is 3, not 2"), `Trace.recognise` with a known form left alone on purpose. `attempt` runs a matcher
body under a trace and turns the outcome into a status (patterns/status.py). The recorded op types, in program
order, become the chain's printed form in reports, for matches and near-misses alike, like onnxscript's rewriter tracer explains
failed matches.
"""

from .status import NOT_THIS_PATTERN, ConditionFailed, Matched, NotThisPattern, Recognised


class _Stop(Exception):
    def __init__(self, make):
        super().__init__()
        self.make = make  # (form, ops) -> status


class Trace:
    def __init__(self, view):
        self.view = view  # the graph interface the ops belong to
        self.ops = []  # ops accepted so far, in walk order, once each
        self.labels = {}  # id(op) -> its label in the printed form

    def take(self, *ops, label=None):
        for op in ops:
            if id(op) in self.labels:
                continue
            self.ops.append(op)
            self.labels[id(op)] = label or self.view.op_type(op)

    def fail(self, reason):
        """Stop: the pattern is there, a condition is not."""
        raise _Stop(lambda form, ops: ConditionFailed(reason, form, ops))

    def recognise(self, kind, reason):
        """Stop: a known spelling the rule leaves alone on purpose."""
        raise _Stop(lambda form, ops: Recognised(kind, reason, form, ops))

    def _in_order(self):
        return sorted(self.ops, key=self.view.position)

    @property
    def form(self):
        """The op types walked, casts left out, in program order: "pow -> reduce_mean -> add -> rsqrt -> mul"."""
        return " -> ".join(self.labels[id(op)] for op in self._in_order() if self.view.op_type(op) != "cast")

    def op_names(self):
        """Names of the ops walked, once each, in program order."""
        return tuple(self.view.op_name(op) for op in self._in_order())


def attempt(view, body):
    """Run `body(trace)`; it returns a match, NOT_THIS_PATTERN, or stops through trace.fail/recognise."""
    trace = Trace(view)
    try:
        match = body(trace)
    except _Stop as stop:
        return stop.make(trace.form, trace.op_names())
    if match is None or isinstance(match, NotThisPattern):
        return NOT_THIS_PATTERN
    return Matched(match, trace.form, trace.op_names())
