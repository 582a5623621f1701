"""The row self-check: the proof (numerics/proofs.py) of rules whose `proof` is ROWS, for every such rule alike.

Each chain is evaluated on inputs of the magnitudes the rule declares (`rule.magnitudes`; the norm rules add one
large enough to overflow x^2 in fp16), each batch holding one all-zero row, and every other row shifted off
zero mean (a misread mean shows only there). Two things must hold:

1. The match is read right: the original chain evaluated in float64 equals, to 1e-6, the formula the matcher
   read from it (the rule's `as_read`: the axes and parameters it read, and whatever else the chain spelled).
   A chain mlopt misunderstood is left alone, whatever the rewrite would do.
2. The rewrite is right: the replacement, evaluated in its declared dtypes, equals the rule's float64
   `reference` within its dtype's tolerance. For ordinary chains that formula is also what the chain computes;
   where the rewrite deliberately changes the arithmetic, it is what the model author wrote.

The original chain's own error against the same formula is reported beside the rewrite's: at large magnitudes an
fp16 chain overflows. Only the chain is evaluated: the input fed is the tensor the chain reads (above its
casts), and nothing else of the model is computed. Rows are independent, so all magnitudes share one input of a
few rows: a (1, 512, 2048) activation is checked as (1, 7, 2048), and the check costs the same for any sequence
length. Ops that bake the declared row count in are evaluated through row-free stand-ins (row_free.py); where
one has none (an operand that varies along the rows), each magnitude gets the declared shape.

Its memory is bounded whatever the model declares (a 1.5 KB file can declare rows of 10**8 elements): no input
it builds holds more than the rule's operand budget (default BUDGET) elements - the rows are split into several
batches, down to one row each, when a row is large - and neither does any constant an operand is computed from. A chain that
needs more is left alone with the reason; `--no-verify` rewrites it unchecked. A chain the interpreter cannot evaluate
(declared and computed shapes disagree, an op it lacks) is left alone too, never an exception: the self-check
runs on whatever a model file holds. Floating-point warnings are silenced: an operand holding inf is the model's.
"""

import math
from dataclasses import dataclass

import numpy as np

from ..errors import MloptError
from ..graph.casts import cast_ancestry
from ..graph.dtypes import NUMPY, name as dtype_name
from ..graph.shapes import varies_off
from ..graph.spec_graph import read_names
from .compare import compare, tolerance_for
from .inputs import UNKNOWN_DIM
from .interpreter import Evaluator, InterpreterError
from .row_free import row_free_substitutes

ROWS_PER_MAGNITUDE = 2
SHIFT = 3.0  # every other row is shifted by SHIFT * magnitude: a mean the chain must handle (a norm's centring)
READ_RTOL = 1e-6  # float64 chain vs the formula read from it: only rounding of float64 differs
BUDGET = 2**20  # default budget: elements of any one input the check builds, of any constant an operand is computed from
UNCHECKED = "not rewritten (--no-verify rewrites without the check)"


@dataclass
class CheckResult:
    passed: bool
    error: float = 0.0  # worst relative error of the rewrite against the rule's float64 reference
    original_error: float = 0.0  # the original chain's worst relative error against it
    reason: str = None  # why the check failed


@dataclass
class _Batch:
    """One input to evaluate, and which part of it holds which magnitude."""

    x: np.ndarray
    parts: list  # [(magnitude, index into the output)]


def self_check(view, blobs, rule, match, new_ops, seed=0):
    """Check `rule`'s `match` and its replacement `new_ops` numerically; never raises for what a model file holds."""
    with np.errstate(all="ignore"):
        try:
            return _self_check(view, blobs, rule, match, new_ops, seed)
        except MloptError:  # bad input found on the way (an unreadable weight file): the caller reports it
            raise
        except (InterpreterError, ValueError, ArithmeticError) as e:
            return CheckResult(False, reason=f"could not be evaluated: {e}; not rewritten")


def _self_check(view, blobs, rule, match, new_ops, seed):
    source = cast_ancestry(view, match.x)[-1]
    refusal = _unfit(view, source, match)
    if refusal:
        return CheckResult(False, reason=refusal)
    subs, row_free = row_free_substitutes(view, match)
    whole = len(match.axes) == view.rank(source) or not row_free
    budget = rule.operand_budget or BUDGET
    refusal = _over_budget(view, source, match, whole, subs, budget, rule.axes_name)
    if refusal:
        return CheckResult(False, reason=refusal)
    batches, full = _batches(view, source, match, whole, np.random.default_rng(seed), budget, rule.magnitudes)
    rtol, atol = tolerance_for(NUMPY[match.dtype], NUMPY.get(view.dtype(match.output), NUMPY[match.dtype]))
    overlay = {**subs, **{out.name: op for op in new_ops for out in op.outputs}}
    operands = {name: value for name, value in match.operands.items() if value is not None}
    wanted = [match.output, match.x, *operands.values()]
    result = CheckResult(True)
    for batch in batches:
        strict = list(batch.x.shape) == full  # fed smaller than declared: check ranks only
        exact = Evaluator(view, blobs, float_dtype=np.float64, overlay=subs, strict_shapes=strict)
        original = Evaluator(view, blobs, overlay=subs, strict_shapes=strict)
        rewritten = Evaluator(view, blobs, overlay=overlay, strict_shapes=strict)
        feeds = {source: batch.x.astype(NUMPY[view.dtype(source)])}
        values = exact.evaluate(wanted, feeds)
        known = {name: values[value] for name, value in operands.items()}
        limit = float(np.finfo(NUMPY[match.dtype]).max)
        for name, value in known.items():
            if not np.all(np.isfinite(value)):
                return CheckResult(False, reason=f"{name} holds inf or nan: nothing to compare against; {UNCHECKED}")
            if value.size and float(np.max(np.abs(value))) > limit:
                return CheckResult(False, reason=(
                    f"{name} holds {float(np.max(np.abs(value))):g}, beyond the {dtype_name(match.dtype)} range the "
                    f"rewrite computes in; not rewritten"))
        as_read = rule.as_read(match, values[match.x], known)
        truth = rule.reference(values[match.x], known, match.axes, match.params)
        new = rewritten.evaluate([match.output], feeds)[match.output]
        old = original.evaluate([match.output], feeds)[match.output]
        for magnitude, part in batch.parts:
            read = compare(values[match.output][part], as_read[part], rtol=READ_RTOL, atol=READ_RTOL * _scale(as_read[part]))
            if not read.passed:
                return CheckResult(
                    False, reason=f"mlopt misread this chain: in float64 it differs from the matched {rule.title} by "
                    f"{_worst(read):.2g} (relative) at input magnitude {magnitude:g}; not rewritten"
                )
            new_diff = compare(new[part], truth[part], rtol=rtol, atol=atol)
            result.original_error = max(result.original_error, _worst(compare(old[part], truth[part], rtol=rtol, atol=atol)))
            result.error = max(result.error, _worst(new_diff))
            if not new_diff.passed and result.passed:
                result.passed = False
                result.reason = (
                    f"self-check failed: the rewrite differs from {rule.title} by {_worst(new_diff):.2g} (relative) at "
                    f"input magnitude {magnitude:g}; rolled back"
                )
    return result


def _unfit(view, source, match):
    """Why the chain's input cannot be fed at all (a malformed program), or None."""
    vt = view.types.get(source)
    if vt is None or vt.WhichOneof("type") != "tensorType" or view.dtype(source) not in NUMPY:
        kind = "no tensor" if vt is None or vt.WhichOneof("type") != "tensorType" else dtype_name(view.dtype(source))
        return f"could not be evaluated: its input '{source}' is {kind}, which the interpreter cannot feed; not rewritten"
    if view.rank(source) != view.rank(match.x):
        return (
            f"could not be evaluated: its input '{source}' has rank {view.rank(source)}, the tensor the chain reads "
            f"rank {view.rank(match.x)}; not rewritten"
        )
    return None


def _over_budget(view, source, match, whole, subs, budget, axes_name):
    """Why checking this chain would need more than `budget` elements in one input or constant, or None. `whole`:
    each magnitude is fed the whole declared shape; `subs`: the row-free stand-ins evaluated instead; `axes_name`:
    what the rule calls the axes it mixes over."""
    full = _shape(view, source)
    row = math.prod(full[a] for a in match.axes)
    if row > budget:
        return f"{axes_name} size {row} exceeds the self-check's budget of {budget} elements; {UNCHECKED}"
    if whole and math.prod(full) > budget:
        varying = [name for name, v in match.operands.items() if v is not None and v not in subs
                   and varies_off(view, v, len(full), match.axes)]
        why = (f"{varying[0]} varies along an axis that is not {axes_name}" if varying else
               f"every axis is {axes_name}" if len(match.axes) == len(full) else
               "an op of the chain assumes the declared rows")
        return (
            f"declared size {math.prod(full)} of '{source}' (checked whole: {why}) exceeds the self-check's budget "
            f"of {budget} elements; {UNCHECKED}"
        )
    for name, operand in match.operands.items():
        if operand is None:
            continue
        evaluated = view.arg(subs[operand], "x") if operand in subs else operand  # a stand-in reads its source
        value, size = _largest_constant(view, evaluated)
        if size > budget:
            what = name if value == operand else f"{name} is computed from '{value}', which"
            return f"{what} holds {size} elements, more than the self-check's budget of {budget}; {UNCHECKED}"
        if whole:  # rows keep an operand's off-axis sizes 1; the whole shape may not
            shape = _shape(view, operand)
            rank = max(len(shape), len(full))  # broadcasting aligns trailing axes
            padded = [1] * (rank - len(full)) + full, [1] * (rank - len(shape)) + shape
            size = math.prod(max(a, b) for a, b in zip(*padded))
            if size > budget:
                return (
                    f"{name} of shape {shape} broadcasts the checked input to {size} elements, more than the "
                    f"self-check's budget of {budget}; {UNCHECKED}"
                )
    return None


def _largest_constant(view, operand):
    """(value, declared elements) of the largest value an operand's constant expression computes (itself
    included). Unknown dimensions count 1: only declared sizes are bounded here; the interpreter checks the rest."""
    largest, seen, stack = (operand, 0), {operand}, [operand]
    while stack:
        value = stack.pop()
        vt = view.types.get(value)
        if vt is not None and vt.WhichOneof("type") == "tensorType":
            dims = vt.tensorType.dimensions
            size = math.prod(int(d.constant.size) if d.WhichOneof("dimension") == "constant" else 1 for d in dims)
            if size > largest[1]:
                largest = (value, size)
        op = view.producer(value)
        if op is None:
            continue
        for read in read_names(op):
            if read not in seen:
                seen.add(read)
                stack.append(read)
    return largest


def _shape(view, source):
    """The declared shape of the chain's input, unknown sizes taken as UNKNOWN_DIM."""
    return [d if d is not None else UNKNOWN_DIM for d in (view.dim(source, i) for i in range(view.rank(source)))]


def _batches(view, source, match, whole, rng, budget, magnitudes):
    """The inputs to check with (a generator: one batch in memory at a time) and the declared shape.

    Rows are independent, so normally the rows share one batch: every axis the match does not mix over has size
    1 except one row axis holding an all-zero row and ROWS_PER_MAGNITUDE rows per magnitude; when those rows
    exceed `budget` they are split over several batches, down to one row each. If an operand varies along an axis
    the match does not mix over (or there is none), each magnitude gets the declared shape instead."""
    full = _shape(view, source)
    if not whole:
        row_axis = [i for i in range(len(full)) if i not in match.axes][-1]
        row_shape = [d if i in match.axes else 1 for i, d in enumerate(full)]
        rows_per_batch = min(1 + ROWS_PER_MAGNITUDE * len(magnitudes), budget // max(1, math.prod(row_shape)))
        return _row_batches(row_shape, row_axis, rng, rows_per_batch, magnitudes), full
    return _whole_batches(full, match.axes, rng, magnitudes), full


def _row_batches(row_shape, row_axis, rng, rows_per_batch, magnitudes):
    """The zero row, then ROWS_PER_MAGNITUDE rows per magnitude, at most `rows_per_batch` rows to a batch.

    A magnitude's rows stay in one batch whenever they fit (a batch then holds whole magnitudes), so the errors
    measured - relative to the largest value of each magnitude's rows - are those of the unsplit check; only
    rows longer than a third of the budget split a magnitude. The random rows are drawn per magnitude whatever
    the split: every split sees the very numbers the unsplit check does."""

    def groups():
        zero = np.zeros(row_shape)  # reported with the smallest magnitude
        for k, magnitude in enumerate(magnitudes):
            shape = list(row_shape)
            shape[row_axis] = ROWS_PER_MAGNITUDE
            block = rng.standard_normal(shape) * magnitude
            rows = [block[_along(row_axis, len(shape), slice(r, r + 1))] + SHIFT * magnitude * (r % 2)
                    for r in range(ROWS_PER_MAGNITUDE)]
            yield [(magnitude, row) for row in ([zero] if k == 0 else []) + rows]

    pending = []
    for group in groups():
        if pending and len(pending) + len(group) > rows_per_batch:
            yield _stack(pending, row_axis)
            pending = []
        for row in group:  # a group larger than a batch is cut into full batches and a rest
            pending.append(row)
            if len(pending) == rows_per_batch:
                yield _stack(pending, row_axis)
                pending = []
    if pending:
        yield _stack(pending, row_axis)


def _stack(rows, row_axis):
    x = np.concatenate([r for _, r in rows], axis=row_axis)
    parts, start = [], 0
    for k, (magnitude, _) in enumerate(rows):
        if k + 1 == len(rows) or rows[k + 1][0] != magnitude:
            parts.append((magnitude, _along(row_axis, x.ndim, slice(start, k + 1))))
            start = k + 1
    return _Batch(x, parts)


def _along(axis, rank, index):
    return tuple(index if i == axis else slice(None) for i in range(rank))


def _whole_batches(full, axes, rng, magnitudes):
    """One batch per magnitude at the declared shape: rows (along the axes not mixed over) alternately centred
    and shifted by SHIFT * magnitude, the first row zero; with no such axis, every other magnitude shifted."""
    rows = [d for i, d in enumerate(full) if i not in axes]
    for k, magnitude in enumerate(magnitudes):
        x = rng.standard_normal(full) * magnitude
        if rows and x.size:
            parity = np.indices(rows).sum(axis=0) % 2
            x += SHIFT * magnitude * np.expand_dims(parity, tuple(axes))
            x[tuple(slice(None) if i in axes else 0 for i in range(len(full)))] = 0.0
        elif k % 2:
            x += SHIFT * magnitude
        yield _Batch(x, [(magnitude, ...)])


def _worst(difference):
    return difference.max_rel if difference.mismatched_nonfinite == 0 else float("inf")


def _scale(values):
    finite = np.isfinite(values)
    return float(np.abs(values[finite]).max()) if finite.any() else 1.0
