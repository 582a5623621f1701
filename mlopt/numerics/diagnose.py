"""What `verify` says beyond pass/fail: when two functions need no run at all, and why outputs differ.

`identical_function`: the same program bytes reading byte-identical weight files compute the same outputs, so
`verify` on a package `optimize` left unchanged answers at once, whatever the model's size.

`explain`: when an output differs, "max rel inf" alone does not say which model is wrong. The reference is run
again in float64 (every float value, casts included: the chain's mathematics), and both models are measured
against it. If the reference itself departs - typically an fp16 `x^2` overflowing - the report names the first
op whose output is not finite where the float64 run's is, and says whether the candidate stays finite.
"""


import numpy as np

from ..graph.spec_graph import op_name
from .compare import compare
from .interpreter import Evaluator, InterpreterError
from ..package.weights import blob_values

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
