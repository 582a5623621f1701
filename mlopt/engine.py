"""The optimize pipeline on a parsed spec: find every rule's chains in every function, lower them, prove each
replacement (numerics/proofs.py: the proof its rule names), splice in the ones that pass, record provenance (one
metadata key per rule). A replacement that cannot be built or proved leaves its chain alone with the reason.

Kept free of file I/O so the CLI, the Python API and batch processing share it, and free of `import coremltools`
so the command line starts fast. The spec is validated first (graph/validate.py; linear, ~10 us per op) unless
the package reader did: a spec handed in from memory (`mlopt.optimize(mlmodel)`) gets the same guarantee, and
nothing below ever sees a malformed program.
"""

import logging
from collections import Counter

import numpy as np

from ._version import __version__
from .graph import SpecGraph
from .graph.dtypes import name as dtype_name
from .graph.stored_constants import StoredConstants
from .graph.validate import validate_program
from .numerics.proofs import prove
from .numerics.selfcheck import CheckResult
from .package.weights import BlobReader
from .report import LEFT_ALONE, MATCHED, REWRITTEN, WOULD_REWRITE, ChainReport, FunctionReport
from .rewrites import apply_rewrites, plan_rewrites
from .rewrites.output_parts import OutputParts
from . import rules as registry
from .selection import Selection

log = logging.getLogger("mlopt")
PROVENANCE_VERSION = "com.github.mlopt.version"


def provenance_key(rule):
    """The metadata key counting `rule`'s rewrites over every mlopt run on the model."""
    return f"com.github.mlopt.{rule.name}_rewrites"


def optimize_spec(
    spec, compute_units="CPU_AND_NE", dry_run=False, model_dir=None, verify=True, blobs=None, model_path=None,
    validated=False, selection=None, label=None, rules=None, new_blobs=None, lint=None, warn=True,
    split_outputs=False, scratch=False,
):
    """Rewrite every chain the rules (rules/) match in `spec`, in place; return one FunctionReport per function.

    Nothing changes with `dry_run` (the rewrite is applied to a copy, to report what a real run would do; with
    `scratch` too, `spec` is that copy: the caller made it, a later pass reads the rewrites there); a rule
    that does not pay for `compute_units` only reports its chains ("matched"). With `verify`, each replacement is proved
    (numerics/proofs.py) and rolled back if it disagrees; `model_dir` (the folder holding the model file,
    "@model_path") lets the proof read the weights its operands hold from weight.bin; a caller that already has a
    BlobReader (confined to the package) passes it as `blobs` instead, and closes it itself. `selection` limits
    the chains and functions touched (a selection naming nothing is warned about, naming `label`). A malformed
    program raises BadInputError naming `model_path` (else `model_dir`); `validated` says the caller has checked
    it already (graph/validate.py). `rules` is the rule set (default: the registry, read now). `new_blobs` (a
    package/weight_writer.NewBlobs over `blobs`) receives the weights rewrites add; without it a rewrite that
    needs a new stored weight is left alone with the reason. `lint(view)`, if given, is called on each function
    before its rewrites and returns `finish(rewritten view or None)`, whose result the function's report keeps
    (`FunctionReport.lint`): the API passes analyses/lint.rewrite_changes, which sits above this layer. `warn`
    False leaves the warning about --only/--skip/--function names that name nothing to a caller that runs several
    passes (`warn_unmatched` over all of them).
    `split_outputs` lets a rule whose replacement is separable (`Rule.separable_output`) return its parts as
    separate function outputs where its result is one (rewrites/output_parts.py); the model description and
    metadata follow. Without it the interface never changes, and each report says where it could
    (`FunctionReport.outputs`).
    """
    if not validated:
        validate_program(spec, model_path or model_dir or "the model")
    rules = registry.rule_set(rules)
    selection = selection or Selection()
    rewriting = {rule.name for rule in rules if rule.applies(compute_units)}
    outputs = OutputParts(spec, enabled=split_outputs, dry_run=dry_run)
    owned = blobs is None and model_dir is not None
    blobs = BlobReader(model_dir) if owned else blobs
    try:
        reports = [_optimize_function(name, spec.mlProgram.functions[name], rules, rewriting, dry_run, blobs, verify,
                                      selection, new_blobs, lint, outputs, in_place=scratch)
                   for name in sorted(spec.mlProgram.functions)]
    finally:
        if owned:
            blobs.close()
    outputs.finish()
    if warn:
        warn_unmatched(selection, reports, label or model_path or model_dir, rules)
    rewrites = Counter(c.rule for f in reports for c in f.chains if c.status == REWRITTEN)
    if rewrites:
        _record_provenance(spec, rewrites, rules)
    return reports


def _optimize_function(name, function, rules, rewriting, dry_run, blobs, verify, selection, new_blobs, lint=None, outputs=None,
                       in_place=False):
    if dry_run and not in_place:  # the rewrite goes into a copy: the report shows what a real run would do, the spec stays
        copy = type(function)()
        copy.CopyFrom(function)
        function = copy
    view = SpecGraph(name, function, stored=StoredConstants(blobs))
    report = FunctionReport(name=name, opset=view.opset)
    before = op_counts(view)
    finish_lint = lint(view) if lint is not None else None
    if selection.functions is not None and name not in selection.functions:
        report.note = "function not selected by --function"
    candidates = registry.find_candidates(view, rules)
    if not candidates:
        report.note = report.note or _why_no_candidates(view, rules)
    unselected = {id(c): selection.chain_reason(c.anchor, name, c.rule.name) for c in candidates}
    matches = [(c.rule, c.match) for c in candidates if c.match is not None and unselected[id(c)] is None]
    refused = {id(m): check for _, m in matches if (check := _ambiguous(view, m)) is not None}
    to_plan = [(rule, m) for rule, m in matches if id(m) not in refused and rule.name in rewriting]
    with np.errstate(all="ignore"):  # constants cast to the model's dtypes (an absurd eps overflows fp16)
        planned, failed = plan_rewrites(view, to_plan, new_blobs)
    reader = new_blobs.reader_overlay() if new_blobs is not None else blobs  # new weights as they will be written
    checks = {id(p.match): prove(view, reader, p.rule, p.match, p.ops) for p in planned} if verify else {}
    checks.update(refused)
    checks.update({key: CheckResult(False, reason=f"its replacement could not be built: {why}; not rewritten")
                   for key, why in failed.items()})
    keep = [p for p in planned if id(p.match) not in checks or checks[id(p.match)].passed]
    done = WOULD_REWRITE if dry_run else REWRITTEN
    replacement = {id(p.match): [op.type for op in p.ops if op.type != "const"] for p in planned}
    for c in candidates:
        status = done if c.rule.name in rewriting else MATCHED
        chain = _chain_report(c, status, checks.get(id(c.match)), unselected[id(c)])
        chain.replacement = replacement.get(id(c.match))
        report.chains.append(chain)
        log.debug("function %s: %s %s: %s (ops %s)", name, chain.status, c.anchor, chain.reason or c.form, ", ".join(c.ops))
    apply_rewrites(view, keep)
    if outputs is not None and keep:
        report.outputs = outputs.split(name, function, keep)
    rewritten = SpecGraph(name, function) if keep else None
    after = op_counts(rewritten) if keep else before
    report.ops = {t: [before.get(t, 0), after.get(t, 0)] for t in sorted(set(before) | set(after))}
    if finish_lint is not None:
        report.lint = finish_lint(rewritten)
    return report


def op_counts(view):
    """Op type -> how many ops of that type the function holds, nested blocks included, constants excluded."""
    return dict(Counter(op.type for op in view.ops() if op.type != "const"))


def _why_no_candidates(view, rules):
    """Why a function has no candidate chain: what the rules look for, and the look-alikes they name that it holds
    (`rule.lookalikes`: a native layer_norm for the norm rules)."""
    lookalikes = {}
    for rule in rules:
        for op_type, why in rule.lookalikes.items():
            lookalikes.setdefault(op_type, why)
    others = sorted({op.type for op in view.ops() if op.type in lookalikes})
    seen = "; ".join(f"{t}: {lookalikes[t]}" for t in others)
    looked = " or ".join(rule.looks_for_text for rule in rules)
    return f"no {looked}" + (f"; {seen}" if seen else "")


def warn_unmatched(selection, reports, where, rules):
    """A name given to --only/--skip/--function that names nothing is most likely a typo: say so."""
    from .rules import OPT_IN

    anchors = {c.anchor for f in reports for c in f.chains} | {rule.name for rule in rules}
    for flag, names, known in (("--only", selection.only, anchors), ("--skip", selection.skip, anchors),
                               ("--function", selection.functions, {f.name for f in reports})):
        for missing in sorted((names or set()) - known):
            if flag != "--function" and missing in OPT_IN:
                log.warning("%s: %s %s: the rule runs only with %s", where, flag, missing, OPT_IN[missing])
                continue
            log.warning("%s: %s %s names no %s of this model", where, flag, missing, "function" if flag == "--function" else "candidate chain")


def _ambiguous(view, match):
    """A failed CheckResult if an op the rewrite would touch (the chain's ops and the consts feeding them) shares
    its name with another op: the splice and the dead-op sweep go by op name. None otherwise."""
    touched = set(match.ops)
    for name in match.ops:
        op = view.op_by_name.get(name)
        for param in op.inputs if op is not None else ():
            producer = view.producer(view.arg(op, param))
            if producer is not None and producer.type == "const":
                touched.add(view.op_name(producer))
    clash = sorted(touched & view.duplicate_op_names)
    if not clash:
        return None
    reason = f"op name '{clash[0]}' names several ops of this function; not rewritten"
    return CheckResult(False, error=None, original_error=None, reason=reason)


def _chain_report(candidate, status, check, unselected):
    m, rule = candidate.match, candidate.rule
    common = dict(ops=list(candidate.ops), rule=rule.name, kind=rule.title)
    if m is None or unselected:
        return ChainReport(candidate.anchor, candidate.form, LEFT_ALONE, reason=candidate.reason or unselected, **common)
    chain = ChainReport(
        candidate.anchor,
        candidate.form,
        status,
        x=m.x,
        output=m.output,
        dtype=dtype_name(m.dtype),
        summary=rule.summary(m),
        note=m.note,
        fields=rule.report_fields(m),
        operands=dict(m.operands),
        **common,
    )
    if check is not None:
        chain.error, chain.original_error = check.error, check.original_error
        if not check.passed:
            chain.status, chain.reason = LEFT_ALONE, check.reason
    return chain


def _record_provenance(spec, rewrites, rules):
    """Add each rule's rewrites (a Counter by rule name) to its count in the model's metadata."""
    metadata = spec.description.metadata.userDefined
    metadata[PROVENANCE_VERSION] = __version__
    for rule in rules:
        if rewrites.get(rule.name):
            key = provenance_key(rule)
            text = metadata.get(key, "")
            previous = int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else 0  # "²".isdigit() is True
            metadata[key] = str(previous + rewrites[rule.name])
