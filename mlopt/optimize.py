"""The optimize pipeline on a parsed spec: find chains in every function, lower them, self-check each
replacement numerically, splice in the ones that pass, record provenance.

Kept free of file I/O so the CLI, the Python API and batch processing share it, and free of `import coremltools`
so the command line starts fast.
"""

from ._version import __version__
from .compute_units import REWRITING_UNITS
from .graph import FunctionView
from .graph.dtypes import name as dtype_name
from .numerics.selfcheck import self_check
from .numerics.weights import BlobReader
from .patterns import find_rms_norms
from .report import ChainReport, FunctionReport
from .rewrites import apply_rewrites, plan_rewrites

PROVENANCE_VERSION = "com.github.mlopt.version"
PROVENANCE_REWRITES = "com.github.mlopt.rms_norm_rewrites"


def optimize_spec(spec, compute_units="CPU_AND_NE", dry_run=False, model_dir=None, verify=True):
    """Rewrite every RMSNorm chain of `spec` in place and return one FunctionReport per function.

    Nothing changes with `dry_run` or compute units other than CPU_AND_NE. With `verify`, each replacement is
    self-checked (numerics/selfcheck.py) and rolled back if it disagrees; `model_dir` (the folder holding the
    model file, "@model_path") lets the check read weights such as gamma from weight.bin.
    """
    rewrite = compute_units in REWRITING_UNITS
    blobs = BlobReader(model_dir) if model_dir else None
    try:
        reports = [_optimize_function(name, spec.mlProgram.functions[name], rewrite, dry_run, blobs, verify)
                   for name in sorted(spec.mlProgram.functions)]
    finally:
        if blobs is not None:
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
    planned = plan_rewrites(view, matches) if rewrite else []
    checks = {id(p.match): self_check(view, blobs, p.match, p.ops) for p in planned} if verify else {}
    keep = [p for p in planned if id(p.match) not in checks or checks[id(p.match)].passed]
    status = "would rewrite" if dry_run or not rewrite else "rewritten"
    for c in candidates:
        report.chains.append(_chain_report(c, status, checks.get(id(c.match))))
    if not dry_run:
        stats = apply_rewrites(view, keep)
        report.ops_removed, report.ops_added = stats.ops_removed, stats.ops_added
    return report


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
    previous = int(metadata[PROVENANCE_REWRITES]) if metadata.get(PROVENANCE_REWRITES, "").isdigit() else 0
    metadata[PROVENANCE_VERSION] = __version__
    metadata[PROVENANCE_REWRITES] = str(previous + rewrites)
