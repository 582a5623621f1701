"""The optimize pipeline on a parsed spec: find chains in every function, lower them, self-check each
replacement numerically, splice in the ones that pass, record provenance.

Kept free of file I/O so the CLI, the Python API and batch processing share it, and free of `import coremltools`
so the command line starts fast. The spec is validated first (graph/validate.py; linear, ~10 us per op) unless
the package reader did: a spec handed in from memory (`mlopt.optimize(mlmodel)`) gets the same guarantee, and
nothing below ever sees a malformed program.
"""

import numpy as np

from ._version import __version__
from .compute_units import REWRITING_UNITS
from .graph import FunctionView
from .graph.dtypes import name as dtype_name
from .graph.validate import validate_program
from .numerics.selfcheck import CheckResult, self_check
from .numerics.weights import BlobReader
from .patterns import find_rms_norms
from .report import ChainReport, FunctionReport
from .rewrites import apply_rewrites, plan_rewrites

PROVENANCE_VERSION = "com.github.mlopt.version"
PROVENANCE_REWRITES = "com.github.mlopt.rms_norm_rewrites"


def optimize_spec(
    spec, compute_units="CPU_AND_NE", dry_run=False, model_dir=None, verify=True, blobs=None, model_path=None, validated=False
):
    """Rewrite every RMSNorm chain of `spec` in place and return one FunctionReport per function.

    Nothing changes with `dry_run` or compute units other than CPU_AND_NE. With `verify`, each replacement is
    self-checked (numerics/selfcheck.py) and rolled back if it disagrees; `model_dir` (the folder holding the
    model file, "@model_path") lets the check read weights such as gamma from weight.bin; a caller that already
    has a BlobReader (confined to the package) passes it as `blobs` instead, and closes it itself.
    A malformed program raises BadInputError naming `model_path` (else `model_dir`); `validated` says the package
    reader has checked it already.
    """
    if not validated:
        validate_program(spec, model_path or model_dir or "the model")
    rewrite = compute_units in REWRITING_UNITS
    owned = blobs is None and model_dir is not None
    blobs = BlobReader(model_dir) if owned else blobs
    try:
        reports = [_optimize_function(name, spec.mlProgram.functions[name], rewrite, dry_run, blobs, verify)
                   for name in sorted(spec.mlProgram.functions)]
    finally:
        if owned:
            blobs.close()
    rewrites = sum(f.count("rewritten") for f in reports)
    if rewrites:
        _record_provenance(spec, rewrites)
    return reports


def _optimize_function(name, function, rewrite, dry_run, blobs, verify):
    view = FunctionView(name, function)
    report = FunctionReport(name=name, opset=view.opset)
    candidates = find_rms_norms(view)
    matches = [c.match for c in candidates if c.match is not None]
    refused = {id(m): _ambiguous(view, m) for m in matches if _ambiguous(view, m)}
    with np.errstate(all="ignore"):  # constants cast to the model's dtypes (an absurd eps overflows fp16)
        planned = plan_rewrites(view, [m for m in matches if id(m) not in refused]) if rewrite else []
    checks = {id(p.match): self_check(view, blobs, p.match, p.ops) for p in planned} if verify else {}
    checks.update(refused)
    keep = [p for p in planned if id(p.match) not in checks or checks[id(p.match)].passed]
    status = "would rewrite" if dry_run or not rewrite else "rewritten"
    for c in candidates:
        report.chains.append(_chain_report(c, status, checks.get(id(c.match))))
    if not dry_run:
        stats = apply_rewrites(view, keep)
        report.ops_removed, report.ops_added = stats.ops_removed, stats.ops_added
    return report


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


def _chain_report(candidate, status, check):
    m = candidate.match
    ops = list(candidate.ops)
    if m is None:
        return ChainReport(candidate.anchor, candidate.form, "left alone", reason=candidate.reason, ops=ops)
    chain = ChainReport(
        candidate.anchor,
        candidate.form,
        status,
        ops=ops,
        x=m.x,
        gamma=m.gamma,
        output=m.output,
        axes=list(m.axes),
        epsilon=m.epsilon,
        dtype=dtype_name(m.dtype),
        note=m.note,
    )
    if check is not None:
        chain.error, chain.original_error = check.error, check.original_error
        if not check.passed:
            chain.status, chain.reason = "left alone", check.reason
    return chain


def _record_provenance(spec, rewrites):
    metadata = spec.description.metadata.userDefined
    text = metadata.get(PROVENANCE_REWRITES, "")
    previous = int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else 0  # "²".isdigit() is True
    metadata[PROVENANCE_VERSION] = __version__
    metadata[PROVENANCE_REWRITES] = str(previous + rewrites)
