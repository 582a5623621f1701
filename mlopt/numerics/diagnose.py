"""What `verify` says beyond pass/fail: when two functions need no run at all, and why outputs differ.

`identical_function`: the same program bytes reading byte-identical weight files compute the same outputs, so
`verify` on a package `optimize` left unchanged answers at once, whatever the model's size.

`explain`: when an output differs, "max rel inf" alone does not say which model is wrong. The reference is run
again in float64 (every float value, casts included: the chain's mathematics), and both models are measured
against it. If the reference itself departs - typically an fp16 `x^2` overflowing - the report names the first
op whose output is not finite where the float64 run's is, and says whether the candidate stays finite.
"""

import math

import numpy as np

from ..graph.dtypes import FLOAT16 as FP16
from ..graph.view import op_name
from .compare import compare
from .interpreter import Evaluator, InterpreterError
from .weights import blob_values

def identical_function(ref_fn, cand_fn, ref_blobs, cand_blobs):
    """True if both functions are the same bytes and every weight file they read holds the same bytes."""
    if ref_fn.SerializeToString(deterministic=True) != cand_fn.SerializeToString(deterministic=True):
        return False
    return all(ref_blobs.same_file_as(cand_blobs, name) for name in sorted(_weight_files(ref_fn)))


def _weight_files(function):
    return {value.blobFileValue.fileName for value in blob_values(function)}


def explain(failed, view, blobs, feeds, ref_out, cand_out):
    """Add to each failed OutputCheck how both models compare with the reference's float64 run."""
    try:
        exact = Evaluator(view, blobs, float_dtype=np.float64).run(feeds, [c.output for c in failed])
    except InterpreterError as e:
        for check in failed:
            check.note = f"no float64 run to explain it ({e})"
        return
    overflow = None
    for check in failed:
        truth = exact[check.output]
        ref, cand = ref_out[check.output], cand_out[check.output]
        ref_err, cand_err = _error(ref, truth), _error(cand, truth)
        parts = [f"against float64: reference {_fmt(ref_err)}, candidate {_fmt(cand_err)}"]
        if ref_err > check.rtol and ref_err > cand_err:
            overflow = overflow or _first_overflow(view, blobs, feeds) or "-"
            where = f": not finite first at op '{overflow}'" if overflow != "-" else ""
            agrees = "agrees with float64" if cand_err <= check.rtol else "departs less"
            parts.append(f"the reference departs from the mathematics{where}; the candidate {agrees}")
        elif cand_err > ref_err:
            parts.append("the candidate departs from the mathematics more than the reference")
        else:
            parts.append("the candidate is closer to float64 than the reference: they differ by the reference's own rounding")
        check.note = "; ".join(parts)


def _error(values, truth):
    difference = compare(np.asarray(values, np.float64), truth)
    return float("inf") if difference.mismatched_nonfinite else difference.max_rel


def _fmt(error):
    return "inf" if error == float("inf") else f"{error:.2g}"


def _finite_where(values, truth):
    """True unless `values` is non-finite somewhere the float64 run is finite."""
    with np.errstate(all="ignore"):
        return not np.any(~np.isfinite(np.asarray(values, np.float64)) & np.isfinite(truth))


def _first_overflow(view, blobs, feeds):
    """Name of the first op (program order) whose output holds inf/NaN where the float64 run's does not."""
    targets = [out.name for op in view.main.operations if op.type != "const" for out in op.outputs]
    try:
        plain = Evaluator(view, blobs).run(feeds, targets)
        exact = Evaluator(view, blobs, float_dtype=np.float64).run(feeds, targets)
    except InterpreterError:
        return None
    for op in view.main.operations:
        for out in op.outputs:
            value = plain.get(out.name)
            if isinstance(value, np.ndarray) and value.dtype.kind == "f" and not _finite_where(value, exact[out.name]):
                return op_name(op)
    return None


FP16_MAX = 65504.0


def overflow_thresholds(view):
    """Per RMSNorm chain of `view` (a reference model), the input RMS at which each side overflows fp16 when
    reductions accumulate in fp16 (`verify --accumulate fp16`, the pessimistic model): the original's x^2 past
    |x| = sqrt(65504) = 255.9, its mean of squares once N * RMS^2 > 65504; the rewrite's layer_norm sums the
    squares of 2N values ([x, -x]), so once 2N * RMS^2 > 65504. With fp32 accumulation only the x^2 limit
    remains, and only on the original side."""
    from ..patterns import find_rms_norms

    notes = []
    for candidate in find_rms_norms(view):
        match = candidate.match
        if match is None or view.dtype(match.x) != FP16:
            continue
        sizes = [view.dim(match.x, a) for a in match.axes]
        if any(s is None for s in sizes):
            continue
        n = math.prod(sizes)
        notes.append(
            f"chain at '{candidate.anchor}' (N = {n}), fp16 accumulation: the original overflows once |x| > "
            f"{math.sqrt(FP16_MAX):.1f} or RMS > {math.sqrt(FP16_MAX / n):.3g}; the rewrite once RMS > "
            f"{math.sqrt(FP16_MAX / (2 * n)):.3g} (with fp32 accumulation: the original past |x| > "
            f"{math.sqrt(FP16_MAX):.1f}, the rewrite never)"
        )
    return notes
