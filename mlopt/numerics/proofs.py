"""Proofs: how the engine convinces itself a rewrite is right before keeping it. A rule names its proof
(`rule.proof`, rules/base.py); this module runs it, for every rule alike, and never raises for what a model holds.

- ROWS: the row self-check (selfcheck.py). For rules whose chains mix values along `match.axes` only, so a few
  independent rows at several magnitudes stand for any row count (the norms).
- REGION: the whole chain (the ops the match covers) evaluated at its declared shape, with the program's own
  constants - a -inf mask, a weight - and random inputs at the rule's magnitudes for every value the chain reads
  that is not constant. The rewrite, evaluated in its declared dtypes, must equal the rule's float64 `reference`
  (or, for a rule without one, the original chain evaluated in float64) within its dtype's tolerance. Because the
  constants are the program's, the values a rewrite changes are the ones the proof exercises.
- Both judge at `match.judged_at` when a rule sets it (a constant whose effect shows only downstream, judged at
  the softmax it feeds; several values, such as every norm reading a scaled residual stream, each compared; a
  rule with a float64 `reference` names, for each of several judged values, what the reference reads there:
  `match.readings`, e.g. each softmax's own scores under a mask every layer shares) and
  feed `match.binary` values (float, or integer) from {0, 1} (an attention mask's keep/drop input: the rule's
  note names that assumption), and every bool value the chain reads from {False, True}, each row (last axis)
  holding both, as the audit draws a keep/drop mask (inputs.mask_draw): a select's condition, a padding mask (a
  row of one element is True: a condition broadcast along the softmax axis that is False masks a row entirely).
  A match replacing several values (`match.sites`) is proved as one region: every value the region reads that
  is not constant is fed independently, which is valid because the rewrite must hold for all of them.
- EXACT: REGION, and the rewrite evaluated in float64 must equal the original evaluated in float64 to EXACT_RTOL:
  for rewrites of constant values that keep the arithmetic (a weight split into chunks, scaled by a power of two,
  a constant re-encoded), where any rounding of a changed constant is a bug, whatever the tolerance would allow.
  In its declared dtypes the rewrite must then be within tolerance of the float64 original, or no further from
  it than the original is (a stream scaled to leave fp16 headroom is read by norms that may still overflow in
  fp16 as the original's do: the rewrite computes the same function, it is not judged by a fix it does not make).
- ROUNDED (named by a match of an EXACT rule, `match.proof`): EXACT, but the float64 comparison within the
  dtype's tolerance: a constant the rewrite changed had to be rounded (alpha^2 * eps that fp16 cannot hold).

Memory: every input the proof builds holds at most the rule's `operand_budget` elements (default
selfcheck.BUDGET); a chain that needs more is left alone with the reason. Weights stored in weight files are
read where the interpreter needs them (memory-mapped when large), and a rewrite's new weights are read from
their sources (package/weight_writer.py) exactly as they will be written.
"""

import math

import numpy as np

from ..errors import MloptError
from ..graph.dtypes import BOOL, FLOATS, NUMPY, name as dtype_name
from . import selfcheck
from .compare import compare, tolerance_for
from .inputs import UNKNOWN_DIM, mask_draw
from .interpreter import Evaluator, InterpreterError
from .selfcheck import READ_RTOL, UNCHECKED, CheckResult

ROWS, REGION, EXACT, ROUNDED = "rows", "region", "exact", "rounded"  # rules/base.py's (numerics may not import rules)
EXACT_RTOL = 1e-12  # float64 against float64: only the order of summation may differ


def prove(view, blobs, rule, match, new_ops, seed=0):
    """Run `rule.proof` on `match` and its replacement `new_ops`; a CheckResult, never an exception for what a
    model file holds."""
    proof = getattr(rule, "proof", ROWS)
    if getattr(match, "proof", None) == ROUNDED and proof == EXACT:  # a match that had to round a constant
        proof = ROUNDED
    if proof == ROWS:
        if rule.reference is None:
            return CheckResult(False, reason=f"the {rule.name} rule's row self-check needs its float64 reference; not rewritten")
        return selfcheck.self_check(view, blobs, rule, match, new_ops, seed)
    if proof not in (REGION, EXACT, ROUNDED):
        return CheckResult(False, reason=f"the {rule.name} rule names no known proof ({proof!r}); not rewritten")
    with np.errstate(all="ignore"):
        try:
            return _region(view, blobs, rule, match, new_ops, seed, exact=proof in (EXACT, ROUNDED), rounded=proof == ROUNDED)
        except MloptError:
            raise
        except (InterpreterError, ValueError, ArithmeticError) as e:
            return CheckResult(False, reason=f"could not be evaluated: {e}; not rewritten")


def region_inputs(view, match):
    """The values the chain reads that it does not compute and that are not constant: what the proof feeds."""
    inside = set(match.ops)
    fed = []
    for name in match.ops:
        op = view.op_by_name.get(name)
        # by parameter name: a protobuf map's order varies from process to process, and the values are drawn in
        # this order (the same model must get the same proof, and the same report, every run)
        for _, argument in sorted(op.inputs.items()) if op is not None else ():
            for binding in argument.arguments:
                if binding.WhichOneof("binding") != "name":
                    continue
                value = binding.name
                producer = view.producer(value)
                if producer is not None and view.op_name(producer) in inside:
                    continue
                if value not in fed and not view.is_constant_expr(value):
                    fed.append(value)
    return fed


def _region(view, blobs, rule, match, new_ops, seed, exact, rounded=False):
    budget = rule.operand_budget or selfcheck.BUDGET
    fed = region_inputs(view, match)
    binary = set(getattr(match, "binary", ()))
    shapes = {}
    for value in fed:
        vt = view.types.get(value)
        if vt is None or vt.WhichOneof("type") != "tensorType" or not _feedable(view.dtype(value), value in binary):
            kind = "no tensor" if vt is None or vt.WhichOneof("type") != "tensorType" else dtype_name(view.dtype(value))
            return CheckResult(False, reason=f"could not be evaluated: the chain reads '{value}', {kind}, which the proof cannot feed; not rewritten")
        shape = [d if d is not None else UNKNOWN_DIM for d in (view.dim(value, i) for i in range(view.rank(value)))]
        if math.prod(shape) > budget:
            return CheckResult(False, reason=(
                f"declared size {math.prod(shape)} of '{value}' exceeds the {rule.name} rule's proof budget of {budget} "
                f"elements; {UNCHECKED}"))
        shapes[value] = shape
    rng = np.random.default_rng(seed)
    overlay = {out.name: op for op in new_ops for out in op.outputs}
    targets = _judged(match)  # where the rewrite is judged (rules/base.Match)
    readings = getattr(match, "readings", None) or {}
    if rule.reference is not None and len(targets) > 1 and any(t not in readings for t in targets):
        return CheckResult(False, reason=f"the {rule.name} rule's float64 reference describes one value, the match is judged at {len(targets)}; not rewritten")
    # the operands only where a reference reads them: a stored weight evaluated whole would cost its size in float64
    wanted = list(targets)
    if rule.reference is not None:
        for target in targets:
            read = _read_at(match, target)
            wanted += [v for v in (read.x, *read.operands.values()) if v is not None and v not in wanted]
    result = CheckResult(True)
    for k, magnitude in enumerate(rule.magnitudes):
        feeds = {v: (mask_draw(rng, shapes[v]) if v in binary or view.dtype(v) not in FLOATS
                     else rng.standard_normal(shapes[v]) * magnitude).astype(NUMPY[view.dtype(v)]) for v in fed}
        values = Evaluator(view, blobs, float_dtype=np.float64).evaluate(wanted, feeds)
        news = Evaluator(view, blobs, overlay=overlay).evaluate(list(targets), feeds)
        olds = Evaluator(view, blobs).evaluate(list(targets), feeds)
        news64 = Evaluator(view, blobs, float_dtype=np.float64, overlay=overlay).evaluate(list(targets), feeds) if exact else None
        for target in targets:
            read = _read_at(match, target)
            operands = {name: value for name, value in read.operands.items() if value is not None}
            result, final = _judge(rule, read, view, values, operands, target, news[target], olds[target],
                                   news64[target] if exact else None, magnitude, result, rounded)
            if final:
                return result
    return result


def _feedable(dtype, binary):
    """A value the proof can feed: a float (random normals, or 0s and 1s where the rule marks it `binary`), a bool,
    or an integer the rule marks `binary`. Bools and binary values are drawn as keep/drop masks (inputs.mask_draw:
    every row along the last axis holds both), whatever the rule: a condition the chain selects on, a mask."""
    return dtype in FLOATS or dtype == BOOL or (binary and dtype in NUMPY and np.issubdtype(NUMPY[dtype], np.integer))


def _judged(match):
    """The values the proof compares (rules/base.Match.judged): `judged_at`, one or several, else the output."""
    judged = getattr(match, "judged", None)
    return judged() if judged is not None else (getattr(match, "judged_at", None) or match.output,)


def _read_at(match, target):
    """The match as its reference reads it at `target` (rules/base.Match.read_at: a reading per judged value)."""
    read_at = getattr(match, "read_at", None)
    return read_at(target) if read_at is not None else match


def _judge(rule, match, view, values, operands, target, new, old, new64, magnitude, result, rounded=False):
    """Compare the rewrite at `target` (`new` in its dtypes, `new64` in float64 for EXACT) with the truth and update
    `result`: (result, final), final when the original chain is not what the matcher read (nothing else matters)."""
    out_dtype = NUMPY.get(view.dtype(target), NUMPY[match.dtype])
    rtol, atol = tolerance_for(NUMPY[match.dtype], out_dtype)
    original64 = values[target]
    truth = original64
    if rule.reference is not None:
        known = {name: values[value] for name, value in operands.items()}
        as_read = rule.as_read(match, values[match.x], known)
        if as_read is not None:
            read = compare(original64, as_read, rtol=READ_RTOL, atol=READ_RTOL * _scale(as_read))
            if not read.passed:
                return CheckResult(False, reason=(
                    f"mlopt misread this chain: in float64 it differs from the matched {rule.title} by "
                    f"{_worst(read):.2g} (relative) at input magnitude {magnitude:g}; not rewritten")), True
        truth = rule.reference(values[match.x], known, match.axes, match.params)
    new_diff = compare(new, truth, rtol=rtol, atol=atol)
    old_error = _worst(compare(old, truth, rtol=rtol, atol=atol))
    result.error = max(result.error, _worst(new_diff))
    result.original_error = max(result.original_error, old_error)
    no_worse = new64 is not None and _worst(new_diff) <= old_error  # EXACT: as far from float64 as the original
    if not new_diff.passed and not no_worse and result.passed:
        where = f" at '{target}'" if target != match.output else ""
        result.passed, result.reason = False, (
            f"proof failed: the rewrite differs from the {rule.title} chain{where} by {_worst(new_diff):.2g} (relative) "
            f"at input magnitude {magnitude:g}; rolled back")
    if new64 is not None and result.passed:
        same = compare(new64, original64, rtol=rtol, atol=atol) if rounded else compare(new64, original64, rtol=EXACT_RTOL, atol=0.0)
        if not same.passed:
            where = f" at '{target}'" if target != match.output else ""
            result.passed, result.reason = False, (
                f"{'rounded' if rounded else 'exact'} proof failed: in float64 the rewrite differs from the original{where} by {_worst(same):.2g} "
                f"(relative) at input magnitude {magnitude:g}: the constants it changed do not hold the same "
                f"values; rolled back")
    return result, False


def _worst(difference):
    return difference.max_rel if difference.mismatched_nonfinite == 0 else float("inf")


def _scale(values):
    finite = np.isfinite(values)
    return float(np.abs(values[finite]).max()) if finite.any() else 1.0
