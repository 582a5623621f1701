"""What `verify` decides for each output beyond "within tolerance", and what it says about it (docs/verify.md).

`identical_function`: the same program bytes reading byte-identical weight files compute the same outputs, so
`verify` on a package `optimize` left unchanged answers at once, whatever the model's size.

`judge`: the reference A is itself a rounded computation, so "B differs from A by more than the tolerance" does
not say B is wrong: on a deep fp16 model A's own rounding can be the larger part of the difference. Both are
measured against a float64 run of A's program (numerics/exact.py), and B passes when it is within tolerance of A,
or when it is no further from float64 than FLOAT64_FACTOR times A's error. Where A carries no signal (not finite
where the mathematics is, or an error of 1, what an all-zero output has: an fp16 overflow), A sets no bound: B
must then agree with float64 itself within the tolerance.

`explain`: the words beside each check: both errors, which model departs from the mathematics, and where the
reference first stops being finite.
"""

import math
from dataclasses import dataclass

import numpy as np

from ..package.weights import blob_values
from .compare import compare
from .exact import departs, error_against, first_departure

# B may be up to this many times further from float64 than A and still pass. A correct rewrite rounds in other
# places than the reference: its error against float64 is of the reference's order (up to 1.96x measured on the
# fp16 and mixed-precision fixtures, where a rewrite computing fp32 islands in fp16 gives some precision back),
# while every deliberately wrong rewrite the tests build is 27x or more (docs/verify.md, bench/verify_judge.py).
FLOAT64_FACTOR = 4.0


def identical_function(ref_fn, cand_fn, ref_blobs, cand_blobs):
    """True if both functions are the same bytes and every weight file they read holds the same bytes."""
    if ref_fn.SerializeToString(deterministic=True) != cand_fn.SerializeToString(deterministic=True):
        return False
    return all(ref_blobs.same_file_as(cand_blobs, name) for name in sorted(_weight_files(ref_fn)))


def _weight_files(function):
    return {value.blobFileValue.fileName for value in blob_values(function)}


@dataclass
class Judgement:
    passed: bool
    passed_by: str  # "tolerance" (B within tolerance of A), "float64" (no further from float64 than A), or None
    reference_error: float = None  # A's error against float64 (exact.error_against); None without a float64 run
    candidate_error: float = None
    reference_departs: bool = False  # A is off float64 past the tolerance, and further off than B
    yardstick: bool = True  # A's error bounds B's (False: A is not finite, or no closer to float64 than zeros)
    undefined: bool = False  # float64 itself is NaN/inf where B is finite: the program as stored computes no number
    by_scale: bool = False  # no yardstick, and B passed by its error against float64 (relative to the output's scale)


def judge(ref, cand, truth, difference, factor=FLOAT64_FACTOR):
    """Judgement of candidate values `cand` against reference values `ref`, given their `difference` (compare's,
    with the tolerance in force) and `truth`, the float64 run's values (None when there is none).

    A's error is B's yardstick unless A carries no signal: an error of 1 is what an all-zero output has (an fp16
    chain whose x^2 overflowed collapses to 0), and an infinite one is an overflow the mathematics does not have.
    Then B is held to the tolerance against float64 itself: element by element, or, for an output whose scale
    is far above atol (logits in the 10^4 of an fp16 model), by B's error against float64 relative to the output's
    largest magnitude, which must be within rtol. Element by element, the elements near 0 of such an output
    carry the absolute rounding of the large values they are computed from (an fp16 step is 16 at 2^14), which
    no fp16 computation can bring within atol."""
    if truth is None:
        return Judgement(difference.passed, "tolerance" if difference.passed else None)
    ref_err, cand_err = error_against(ref, truth), error_against(cand, truth)
    yardstick = ref_err < 1 and not departs(ref, truth)
    verdict = Judgement(False, None, ref_err, cand_err, not yardstick or (ref_err > difference.rtol and ref_err > cand_err), yardstick)
    with np.errstate(all="ignore"):
        verdict.undefined = bool(np.any(~np.isfinite(np.asarray(truth, np.float64)) & np.isfinite(np.asarray(cand, np.float64))))
    if difference.passed:
        verdict.passed, verdict.passed_by = True, "tolerance"
    elif math.isfinite(cand_err) and not departs(cand, truth):
        if yardstick:
            verdict.passed = cand_err <= factor * ref_err
        else:
            verdict.passed = compare(np.asarray(cand, np.float64), truth, rtol=difference.rtol, atol=difference.atol).passed
            if not verdict.passed and cand_err <= difference.rtol:
                verdict.passed = verdict.by_scale = True
        verdict.passed_by = "float64" if verdict.passed else None
    return verdict


def explain(verdict, factor=FLOAT64_FACTOR, overflow=None):
    """The note beside a check: both errors against float64 and what they say; `overflow` names the op where the
    reference first stops being finite (first_departure), when the reference departs."""
    if verdict.reference_error is None:
        return None
    ref_err, cand_err = verdict.reference_error, verdict.candidate_error
    parts = [f"against float64: reference {_fmt(ref_err)}, candidate {_fmt(cand_err)}"]
    if verdict.reference_departs:
        where = f": not finite first at op '{overflow}'" if overflow else ""
        parts.append(f"the reference departs from the mathematics{where}")
    if verdict.passed_by == "float64" and verdict.yardstick:
        parts.append(f"beyond tolerance of the reference, but no further from float64 than {factor:g}x the reference's error")
    elif verdict.by_scale:
        parts.append("beyond tolerance of the reference, which carries no signal here; the candidate's error against "
                     "float64, relative to the output's largest magnitude, is within rtol (element by element, the "
                     "rounding of large values puts the elements near 0 past atol)")
    elif verdict.passed_by == "float64":
        parts.append("beyond tolerance of the reference, which carries no signal here; the candidate agrees with float64 within tolerance")
    elif not verdict.passed:
        if verdict.undefined:
            parts.append("float64 itself is NaN/inf where the candidate is finite (the reference's program computes no "
                         "number there, e.g. 0 * a -inf mask sentinel): float64 cannot judge, and the candidate differs "
                         "from the reference")
        elif cand_err > ref_err or not math.isfinite(cand_err):
            parts.append("the candidate departs from the mathematics more than the reference")
        else:
            parts.append("the candidate departs from float64 past the tolerance")
    return "; ".join(parts)


def overflow_op(verdicts, view, blobs, feeds):
    """first_departure of the reference, computed once, only where some output of it carries no signal (two more
    runs keeping every op's output, within the interpreter's budget: not for a reference that merely rounds)."""
    if any(not v.yardstick for v in verdicts):
        return first_departure(view, blobs, feeds)
    return None


def _fmt(error):
    return "inf" if error == float("inf") else f"{error:.2g}"
