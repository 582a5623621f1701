"""Plan and apply rewrites: lower each match with its rule to replacement ops, then splice them into the function.

Planning is separate so a caller (the self-check) can drop a replacement before anything changes. Applying
inserts each replacement where the chain's output op stood: everything it reads (x, gamma) is defined before
that point, and everything reading the output comes after it. Then a dead-op sweep, limited to the chain's own
ops and the literals feeding them, removes what died; an intermediate still used elsewhere (a variance that also
feeds another op, a block output) keeps its ops, so the model stays correct.
"""

from collections import Counter
from dataclasses import dataclass

from ..graph.spec_graph import SpecGraph, op_name
from .spec_builder import OpEmitter, SpecBuilder


@dataclass
class PlannedRewrite:
    rule: object  # the Rule that matched (rules/base.py)
    match: object  # its Match
    ops: list  # the replacement ops of every site, in site order (one site: the last defines match.output)
    sites: list = None  # [(op replaced, its replacement ops)], one per site of the match (rules/base.Match.sites)


@dataclass
class RewriteStats:
    ops_removed: int = 0
    ops_added: int = 0


def plan_rewrites(view, matches, new_blobs=None):
    """The replacement of every (rule, match) pair, with names unique across all of them: (planned, failed), where
    `failed` maps id(match) to why its replacement could not be built (a ValueError of the rule or the builder,
    LoweringFailed among them; the REPLACEMENT_FAILED of onnxscript's rewriter). `new_blobs` receives new
    stored weights (package/weight_writer.py)."""
    emitter = OpEmitter(view.names_in_use())
    planned, failed = [], {}
    for rule, m in matches:
        try:
            sites = lower_sites(view, emitter, rule, m, new_blobs)
            planned.append(PlannedRewrite(rule, m, [op for _, ops in sites for op in ops], sites))
        except (ValueError, ArithmeticError, KeyError, IndexError, TypeError) as e:
            failed[id(m)] = f"{type(e).__name__}: {e}" if not isinstance(e, ValueError) else str(e)
    return planned, failed


def lower(view, emitter, rule, match, new_blobs=None):
    """`rule.lower` on a SpecBuilder: the ops replacing `match.output_op`, in order; the last defines its output."""
    builder = SpecBuilder(view, emitter, f"{match.output}_{rule.name}", new_blobs)
    return builder.finish(rule.lower(builder, match.fused()), match.output_op)


def lower_sites(view, emitter, rule, match, new_blobs=None):
    """[(op, ops replacing it)] for every site of `match` (rules/base.Match.replaced): one lowering per site, a
    builder each, names unique across all of them. A match without sites is `lower` at its output op."""
    if not match.sites:
        return [(match.output_op, lower(view, emitter, rule, match, new_blobs))]
    lowered = []
    for site in match.sites:
        builder = SpecBuilder(view, emitter, f"{site.op.outputs[0].name}_{rule.name}", new_blobs)
        lowered.append((site.op, builder.finish(rule.lower(builder, match.fused(site)), site.op)))
    return lowered


def apply_rewrites(view, planned):
    """Splice `planned` into the function `view` describes, in place; return op counts. `view` is stale after."""
    if not planned:
        return RewriteStats()
    replacement = {id(op): ops for p in planned for op, ops in (p.sites or [(p.match.output_op, p.ops)])}
    candidates = set()  # names of the ops the sweep may remove
    for p in planned:
        for name in p.match.ops:
            candidates.add(name)
            candidates.update(const_feeders(view, view.op_by_name[name]))
    rebuild_blocks(view.blocks, lambda op: replacement.get(id(op), [op]))

    new_names = {op_name(op) for p in planned for op in p.ops}
    spliced = SpecGraph(view.name, view.function)  # one index of the spliced function serves both steps
    dead = dead_ops(spliced, candidates - new_names)
    rebuild_blocks(spliced.blocks, lambda op: [] if op_name(op) in dead else [op])
    return RewriteStats(ops_removed=len(planned) + len(dead), ops_added=sum(len(p.ops) for p in planned))


def rebuild_blocks(blocks, substitute):
    """Replace each op by `substitute(op)` (a list). Innermost blocks first: rebuilding a block copies its ops,
    so a nested block must be final before the op that holds it is copied."""
    for block in reversed(blocks):
        new_ops = [new for op in block.operations for new in substitute(op)]
        if len(new_ops) == len(block.operations) and all(a is b for a, b in zip(new_ops, block.operations)):
            continue
        del block.operations[:]
        block.operations.extend(new_ops)


def const_feeders(view, op):
    """The const ops, and constexpr ops (a compressed weight's decompression), feeding `op`: swept when the
    rewrite leaves them unused."""
    names = (view.arg(op, param) for param in op.inputs)
    return [op_name(view.producers[v]) for v in names if v is not None and v in view.producers
            and (view.is_const(v) or view.producers[v].type.startswith("constexpr_"))]


def dead_ops(view, candidates):
    """Names of candidate ops whose outputs end up unused once dead candidates are gone (a worklist on use counts)."""
    uses = Counter({value: len(u) for value, u in view.uses.items()})
    dead = set()
    work = [view.op_by_name[n] for n in candidates if n in view.op_by_name]
    while work:
        op = work.pop()
        name = op_name(op)
        if name in dead or any(uses[out.name] for out in op.outputs):
            continue
        dead.add(name)
        for param in op.inputs:
            for binding in op.inputs[param].arguments:
                if binding.WhichOneof("binding") == "name":
                    uses[binding.name] -= 1
                    producer = view.producer(binding.name)
                    if producer is not None and op_name(producer) in candidates:
                        work.append(producer)
    return dead
