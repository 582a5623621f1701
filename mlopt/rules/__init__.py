"""The rewrite rules, one module each (rules/base.py says what a rule is). `RULES` is the only list: the engine,
self-check, report, `inspect`, `--only/--skip`, provenance and the conversion-time passes iterate over it."""

from ..patterns.status import Candidate, ConditionFailed, Matched, NotThisPattern, Recognised
from . import layer_norm, rms_norm

RULES = (layer_norm.RULE, rms_norm.RULE)


def rule_names():
    return tuple(rule.name for rule in RULES)


def skip_reason(compute_units, rules=RULES):
    """Why some rules do not rewrite with `compute_units` (their chains are only reported), or None."""
    idle = [rule for rule in rules if not rule.applies(compute_units)]
    if not idle:
        return None
    reasons = "; ".join(rule.units_reason for rule in idle)
    if len(idle) == len(rules):
        return f"compute units {compute_units}: {reasons}; the model is copied unchanged"
    titles = ", ".join(rule.title for rule in idle)
    return f"compute units {compute_units}: {reasons}; {titles} chains are reported, not rewritten"


PREFERENCE = {Matched: 0, ConditionFailed: 1, Recognised: 2}


def find_candidates(graph, rules=RULES):
    """Every candidate of every rule in the function `graph` (any graph/interface.py adapter), in program order.

    Each anchor op is offered to every rule anchored at its type; a match wins there, then a near-miss (the
    rule's reason is the one to act on), then a form recognised and left alone. Chains
    may not overlap: a near-miss anchored inside a matched chain is dropped (the chain explains it), and a match
    sharing ops with an earlier match is left alone (the splice replaces each op once)."""
    by_type = {}
    for rule in rules:
        for op_type in rule.anchors:
            by_type.setdefault(op_type, []).append(rule)
    found = []
    for op in list(graph.ops()):
        tried = [(rule, rule.match(graph, op)) for rule in by_type.get(graph.op_type(op), ())]
        tried = [(rule, status) for rule, status in tried if not isinstance(status, NotThisPattern)]
        if tried:
            rule, status = min(tried, key=lambda pair: PREFERENCE[type(pair[1])])
            found.append(Candidate(rule, graph.name, graph.op_name(op), status))
    taken, kept = {}, []
    for c in found:
        if c.match is not None:
            clash = next((taken[name] for name in c.match.ops if name in taken), None)
            if clash is not None:
                c.status = ConditionFailed(f"shares ops with the {clash.rule.title} chain at '{clash.anchor}'", c.form, c.ops)
            else:
                taken.update((name, c) for name in c.match.ops)
        kept.append(c)
    return [c for c in kept if c.match is not None or c.anchor not in taken]
