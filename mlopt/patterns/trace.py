"""Tracing a match attempt: which ops it walked through, and why it stopped.

A matcher records each op it accepts with `Trace.take`; `Trace.fail` aborts the attempt with a reason a user can
act on ("power is 3, not 2"). The recorded op types become the chain's printed form in reports, for matches and
near-misses alike, like onnxscript's rewriter tracer explains failed matches.
"""


class NoMatch(Exception):
    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


class Trace:
    def __init__(self, view):
        self.view = view  # the graph interface the ops belong to
        self.ops = []  # ops accepted so far, in walk order
        self.labels = []

    def take(self, *ops, label=None):
        for op in ops:
            self.ops.append(op)
            if self.view.op_type(op) != "cast":
                self.labels.append(label or self.view.op_type(op))

    def fail(self, reason):
        raise NoMatch(reason)

    @property
    def form(self):
        return " -> ".join(self.labels)

    def op_names(self):
        """Names of the ops walked, once each, in program order."""
        ops = {id(op): op for op in self.ops}.values()
        return tuple(self.view.op_name(op) for op in sorted(ops, key=self.view.position))
