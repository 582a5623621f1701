"""The rewrite rules, one module each (rules/base.py says what a rule is). `RULES` is the registry: the default
rule set of the engine, the proofs, report, `inspect`, `--only/--skip`, provenance and the conversion-time passes,
read when used (so a test may add a rule of its own). Each of them also takes a rule set as a value (`rules=`),
as onnxscript's RewriteRuleSet is passed: `rule_set(None)` is the registry as it is now."""

from ..patterns.status import Candidate, ConditionFailed, Matched, NotThisPattern, Recognised
from . import finite_bounds, finite_mask, instance_norm, layer_norm, rms_norm, split_wide

RULES = (layer_norm.RULE, rms_norm.RULE, instance_norm.RULE, split_wide.RULE, finite_mask.RULE, finite_bounds.RULE)

# Rules outside the registry, and the option that runs them: `--only fp16_headroom` alone selects nothing.
OPT_IN = {"fp16_headroom": "--headroom"}


def rule_set(rules=None):
    """`rules` as a tuple, or the registry as it is now when None."""
    return tuple(RULES if rules is None else rules)


def skip_reason(compute_units, rules=None):
    """Why some rules do not rewrite with `compute_units` (their chains are only reported), or None."""
    rules = rule_set(rules)
    idle = [rule for rule in rules if not rule.applies(compute_units)]
    if not idle:
        return None
    reasons = "; ".join(rule.units_reason_text for rule in idle)
    if len(idle) == len(rules):
        return f"compute units {compute_units}: {reasons}; the model is copied unchanged"
    titles = ", ".join(rule.title for rule in idle)
    return f"compute units {compute_units}: {reasons}; {titles} chains are reported, not rewritten"


PREFERENCE = {Matched: 0, ConditionFailed: 1, Recognised: 2}


def find_candidates(graph, rules=None):
    """Every candidate of every rule in the function `graph` (any graph/interface.py adapter), in program order.

    Each anchor op is offered to every rule anchored at its type. Every rule that matches there keeps its match
    (an RMSNorm and an E[x^2] - E[x]^2 LayerNorm may share one mean of squares); without a match, the near-miss
    (the rule's reason is the one to act on) wins over a form recognised and left alone. Matches may share
    intermediate ops, not outputs: a match whose output op another match covers (or that covers another's) is
    left alone, since the splice replaces each output once. A near-miss anchored inside a matched chain is
    dropped: the chain explains it."""
    by_type = {}
    for rule in rule_set(rules):
        for op_type in rule.anchors:
            by_type.setdefault(op_type, []).append(rule)
    found = []
    for op in list(graph.ops()):
        tried = [(rule, rule.match(graph, op)) for rule in by_type.get(graph.op_type(op), ())]
        tried = [(rule, status) for rule, status in tried if not isinstance(status, NotThisPattern)]
        picks = [(r, s) for r, s in tried if isinstance(s, Matched)] or sorted(tried, key=lambda p: PREFERENCE[type(p[1])])[:1]
        found += [Candidate(rule, graph.name, graph.op_name(op), status) for rule, status in picks]
    kept = []
    for c in found:
        if c.match is None:
            continue
        clash = next((k for k in kept if _overlap(graph, k.match, c.match)), None)
        if clash is not None:
            c.status = ConditionFailed(f"shares its output with the {clash.rule.title} chain at '{clash.anchor}'", c.form, c.ops)
        else:
            kept.append(c)
    taken = {name for k in kept for name in k.match.ops}
    return [c for c in found if c.match is not None or c.anchor not in taken]


def _overlap(graph, a, b):
    """Whether two matches claim one output: the same output op, or one's output op inside the other's chain."""
    return a.output_op is b.output_op or graph.op_name(a.output_op) in b.ops or graph.op_name(b.output_op) in a.ops
