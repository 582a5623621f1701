"""The optimize pipeline on a parsed spec: find chains in every function, rewrite them, record provenance.

Kept free of file I/O so the CLI, the Python API and batch processing share it, and free of `import coremltools`
so the command line starts fast.
"""

from ._version import __version__
from .graph import FunctionView
from .graph.dtypes import name as dtype_name
from .patterns import find_rms_norms
from .report import ChainReport, FunctionReport
from .rewrites import rewrite_function

COMPUTE_UNITS = ("CPU_AND_NE", "ALL", "CPU_ONLY", "CPU_AND_GPU")
REWRITING_UNITS = ("CPU_AND_NE",)
PROVENANCE_VERSION = "com.github.mlopt.version"
PROVENANCE_REWRITES = "com.github.mlopt.rms_norm_rewrites"


def compute_units_name(compute_units):
    """'CPU_AND_NE' etc. from a string or a `coremltools.ComputeUnit` (anything with that `.name`)."""
    name = getattr(compute_units, "name", compute_units)
    if name not in COMPUTE_UNITS:
        raise ValueError(f"unknown compute units {compute_units!r}; expected one of {', '.join(COMPUTE_UNITS)}")
    return name


def skip_reason(compute_units):
    if compute_units in REWRITING_UNITS:
        return None
    return (
        f"compute units {compute_units}: the LayerNorm trick only pays where the Neural Engine is targeted "
        "explicitly (CPU_AND_NE); the model is copied unchanged"
    )


def optimize_spec(spec, compute_units="CPU_AND_NE", dry_run=False):
    """Rewrite every RMSNorm chain of `spec` in place (unless `dry_run` or the compute units say not to).

    Returns the FunctionReports; the spec is changed only if some chain was rewritten.
    """
    rewrite = compute_units in REWRITING_UNITS and not dry_run
    reports = []
    functions = spec.mlProgram.functions
    for name in sorted(functions):
        view = FunctionView(name, functions[name])
        candidates = find_rms_norms(view)
        report = FunctionReport(name=name, opset=view.opset)
        for c in candidates:
            report.chains.append(_chain_report(c, view, "rewritten" if rewrite else "would rewrite"))
        if rewrite:
            stats = rewrite_function(view, [c.match for c in candidates if c.match is not None])
            report.ops_removed, report.ops_added = stats.ops_removed, stats.ops_added
        reports.append(report)
    rewrites = sum(f.count("rewritten") for f in reports)
    if rewrites:
        _record_provenance(spec, rewrites)
    return reports


def _chain_report(candidate, view, status):
    m = candidate.match
    if m is None:
        return ChainReport(candidate.anchor, candidate.form, "left alone", reason=candidate.reason)
    return ChainReport(
        candidate.anchor, candidate.form, status, output=m.output, axis=m.axis, epsilon=m.epsilon, dtype=dtype_name(m.dtype)
    )


def _record_provenance(spec, rewrites):
    metadata = spec.description.metadata.userDefined
    previous = int(metadata[PROVENANCE_REWRITES]) if metadata.get(PROVENANCE_REWRITES, "").isdigit() else 0
    metadata[PROVENANCE_VERSION] = __version__
    metadata[PROVENANCE_REWRITES] = str(previous + rewrites)
