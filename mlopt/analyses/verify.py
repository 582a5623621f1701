"""`verify`: run two packages on the same inputs in the interpreter and compare every output of every function.

The tolerance follows the precision the function computes in, not only its output dtype: a fp16 model with fp32
outputs (the converter casts them back) is held to fp16 tolerance. `rtol`/`atol` override it.

The reference is a rounded computation too, so both models are also measured against a float64 run of the
reference's program (numerics/exact.py), and an output passes when the candidate is within tolerance of the
reference or no further from float64 than the reference (numerics/diagnose.py judge; docs/verify.md).

A function whose program is byte-identical in both packages, reading weight files that are byte-identical too
(what `optimize` leaves where it rewrote nothing), is equal without running it. Integer inputs that index an
embedding (`gather`) are drawn from its vocabulary; `--scale` applies to float inputs only, and the report says
so.
"""

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import BadInputError, CannotVerify
from ..graph import SpecGraph
from ..graph.dtypes import FLOAT16, FLOAT32, NUMPY
from ..graph.stored_constants import check_blob_references
from ..numerics.compare import compare, tolerance_for
from ..numerics.diagnose import FLOAT64_FACTOR, explain, identical_function, judge, overflow_op
from ..numerics.exact import run_float64
from ..numerics.feeds import check_declared_sizes, check_given_names, check_run_options, function_feeds, load_npz
from ..numerics.interpreter import InterpreterError, run_function
from ..numerics.ops.registry import ACCUMULATE, accumulating
from ..report import SCHEMA, json_safe, lines_text
from ..rewrites.output_parts import recorded_splits
from ..rules import find_candidates
from .source import read_validated


@dataclass
class OutputCheck:
    function: str
    output: str
    max_abs: float
    max_rel: float
    rtol: float
    atol: float
    passed: bool
    problem: str = None
    note: str = None  # how it was decided ("identical program and weights"), both errors against float64, why
    reference_error: float = None  # the reference's error against its float64 run (None: not run)
    candidate_error: float = None  # the candidate's error against the same float64 run
    passed_by: str = None  # "tolerance", "float64" (no further from float64 than the reference), "identical"


@dataclass
class VerifyReport:
    reference: str
    candidate: str
    seed: int
    scale: float = 1.0
    accumulate: str = "fp32"  # what fp16 reductions and norms accumulate in: fp32 (hardware), fp16 (pessimistic)
    float64_factor: float = FLOAT64_FACTOR  # how much further from float64 than the reference the candidate may be
    checks: list = field(default_factory=list)
    notes: list = field(default_factory=list)  # about the inputs: integer ranges, where --scale does not apply
    has_states: bool = False  # a function holds states (iOS18): they are judged too, and the verdict says so

    @property
    def passed(self):
        return bool(self.checks) and all(c.passed for c in self.checks)

    def failure_lines(self):
        """One line per output that differs: what `verify -q` still prints (errors only)."""
        return [f"mlopt: verify: {c.function}/{c.output} differs: {c.problem or f'max rel {c.max_rel:.3g}'}"
                + (f"; {c.note}" if c.note else "") for c in self.checks if not c.passed]

    def render(self, verbose=False):
        lines = [f"mlopt verify {self.reference} {self.candidate} (reference, candidate; seed {self.seed}, scale "
                 f"{self.scale:g}, fp16 accumulated in {self.accumulate})"]
        lines += [f"  note: {note}" for note in self.notes]
        for c in self.checks:
            verdict = "pass" if c.passed else "FAIL"
            if c.passed_by == "identical":  # decided without a run
                detail = c.note
            else:
                detail = c.problem or f"max abs {c.max_abs:.3g}, max rel {c.max_rel:.3g} (rtol {c.rtol:g}, atol {c.atol:g})"
                detail += f"; {c.note}" if c.note else ""
            lines.append(f"  {verdict}  {c.function}/{c.output}: {detail}")
        what = "outputs and states" if self.has_states else "outputs"
        lines.append(f"  {f'all {what} agree' if self.passed else f'{what} differ'}")
        return lines_text(lines)

    def to_dict(self):
        return json_safe(
            dict(schema=SCHEMA, command="verify", reference=self.reference, candidate=self.candidate, seed=self.seed,
                 scale=self.scale, accumulate=self.accumulate, float64_factor=self.float64_factor,
                 passed=self.passed, notes=self.notes,
                 checks=[c.__dict__ for c in self.checks])
        )


def verify_packages(reference_path, candidate_path, seed=0, inputs_path=None, rtol=None, atol=None, scale=1.0, accumulate="fp32"):
    check_run_options(seed, scale, accumulate, ACCUMULATE)
    for name, value in (("--rtol", rtol), ("--atol", atol)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise BadInputError(name, f"{value!r}: a tolerance must be a finite number >= 0")
    given = load_npz(inputs_path)
    ref = read_validated(reference_path)
    try:
        cand = read_validated(candidate_path)
    except BaseException:
        ref.close()
        raise
    ref_blobs, cand_blobs = ref.blob_reader(), cand.blob_reader()
    try:
        check_blob_references(ref.spec, ref_blobs)
        check_blob_references(cand.spec, cand_blobs)
        check_given_names(given, ref.spec, inputs_path)
        report = VerifyReport(ref.path, cand.path, seed, scale, accumulate)
        with accumulating(ACCUMULATE[accumulate]):
            _compare(report, ref, cand, ref_blobs, cand_blobs, given, inputs_path, rtol, atol)
        return report
    finally:
        for closing in (ref_blobs, cand_blobs, ref, cand):
            closing.close()


def _compare(report, ref, cand, ref_blobs, cand_blobs, given, inputs_path, rtol, atol):
    """Fill `report` with one OutputCheck per output of every function of the reference."""
    reference_path, candidate_path = ref.path, cand.path
    for name in sorted(ref.spec.mlProgram.functions):
        ref_fn = ref.spec.mlProgram.functions[name]
        if name not in cand.spec.mlProgram.functions:
            report.checks.append(OutputCheck(name, "*", 0, 0, 0, 0, False, problem=f"function missing in {candidate_path}"))
            continue
        cand_fn = cand.spec.mlProgram.functions[name]
        if _signature(ref_fn) != _signature(cand_fn):
            raise BadInputError(candidate_path, f"function '{name}' takes other inputs than in {reference_path}")
        ref_view = SpecGraph(name, ref_fn)
        cand_view = SpecGraph(name, cand_fn)
        if report.accumulate == "fp16":
            report.notes += [f"function '{name}': {note}" for note in _accumulation_notes(ref_view)]
        states = _state_inputs(ref_fn)  # what a prediction leaves for the next one: compared as outputs are
        compared = list(ref_view.main.outputs) + states
        report.has_states = report.has_states or bool(states)
        if identical_function(ref_fn, cand_fn, ref_blobs, cand_blobs):
            note = "identical program and weights: equal without running"
            report.checks += [OutputCheck(name, out, 0.0, 0.0, 0.0, 0.0, True, note=note, passed_by="identical") for out in compared]
            continue
        for package, view in ((ref, ref_view), (cand, cand_view)):
            check_declared_sizes(package.path, view)
        feeds, notes = function_feeds(reference_path, ref.spec, name, ref_view, report.seed, report.scale, given, inputs_path)
        report.notes += notes
        ref_out = _run(ref, ref_view, ref_blobs, feeds, states)
        cand_run = _run(cand, cand_view, cand_blobs, feeds, states)
        cand_out = _paired_outputs(report, name, ref_view, cand_view, _reassembled(report, name, ref, cand, ref_view, cand_run))
        cand_out.update((state, cand_run[state]) for state in states)
        exact, no_float64 = _float64_outputs(ref_view, ref_blobs, feeds, [o for o in compared if o in cand_out])
        if no_float64:
            report.notes.append(f"function '{name}': no float64 run ({no_float64}); judged by tolerance alone")
        default_rtol, default_atol = tolerance_for(_precision(ref_view), _precision(cand_view))
        verdicts = []
        for out in compared:
            if out not in cand_out:
                report.checks.append(OutputCheck(name, out, 0, 0, 0, 0, False, problem=_missing(out, candidate_path, cand_view)))
                continue
            d = compare(
                cand_out[out], ref_out[out],
                rtol=default_rtol if rtol is None else rtol,
                atol=default_atol if atol is None else atol,
            )
            verdict = judge(ref_out[out], cand_out[out], exact.get(out), d, report.float64_factor)
            problem = f"{d.mismatched_nonfinite} NaN/inf elements differ" if d.mismatched_nonfinite else None
            report.checks.append(OutputCheck(
                name, out, d.max_abs, d.max_rel, d.rtol, d.atol, verdict.passed, problem,
                reference_error=verdict.reference_error, candidate_error=verdict.candidate_error, passed_by=verdict.passed_by,
            ))
            verdicts.append((report.checks[-1], verdict))
        overflow = overflow_op([v for _, v in verdicts], ref_view, ref_blobs, feeds)
        for check, verdict in verdicts:
            check.note = explain(verdict, report.float64_factor, overflow)
            if check.output in states:
                check.note = "; ".join(filter(None, [STATE_AFTER_RUN, check.note]))
            if _nothing_finite(ref_out[check.output], cand_out[check.output]):
                float64 = exact.get(check.output)
                if float64 is not None and np.isfinite(float64).any():  # the inputs are in the domain: the models lose it
                    check.note = "; ".join(filter(None, [NOTHING_COMPARED_FLOAT64_FINITE, check.note]))
                    continue
                stored_nan = float64 is not None and _all_nan(float64)
                check.note = "; ".join(filter(None, [NOTHING_COMPARED, FLOAT64_NAN_TOO if stored_nan else None, check.note]))


STATE_AFTER_RUN = "state: its value after the prediction, what the next prediction reads"


NOTHING_COMPARED = ("no element is finite in either model: nothing was compared (inputs outside the model's domain, "
                    "such as the log of a negative value? give real ones with --inputs)")


NOTHING_COMPARED_FLOAT64_FINITE = ("no element is finite in either model: nothing was compared, though float64 computes "
                                   "numbers there on these inputs: both models lose them")
FLOAT64_NAN_TOO = ("float64 is NaN there too: the reference as stored computes no number on these inputs; if real ones "
                   "give NaN as well, look for 0 times an fp16 -inf mask sentinel (mlopt audit says where NaN starts)")


def _all_nan(array):
    """True if a float array is NaN everywhere (float64's run of a program that multiplies 0 by a stored -inf)."""
    array = np.asarray(array)
    return array.dtype.kind == "f" and array.size > 0 and bool(np.isnan(array).all())


def _nothing_finite(*arrays):
    """True if no array holds a finite float element: equal NaN/inf positions then pass without comparing a value."""
    with np.errstate(all="ignore"):
        return all(np.asarray(a).dtype.kind == "f" and not np.isfinite(a).any() for a in arrays)


def _float64_outputs(view, blobs, feeds, outputs):
    """({output: float64 value}, None), or ({}, why) when the float64 run cannot be made (an op the interpreter
    cannot run in float64, or values past its memory budget: float64 takes 4x fp16's bytes)."""
    try:
        return run_float64(view, blobs, feeds, outputs), None
    except InterpreterError as e:
        return {}, str(e)


def _paired_outputs(report, name, ref_view, cand_view, cand_out):
    """The candidate's outputs keyed by the reference's output names. Two conversions of one model can name their
    outputs differently (coremltools numbers ops with a global counter): with as many outputs and no name in
    common they are paired by position, and a note says so."""
    ref_names, cand_names = list(ref_view.main.outputs), list(cand_view.main.outputs)
    if len(ref_names) != len(cand_names) or set(ref_names) & set(cand_names):
        return cand_out
    report.notes.append(f"function '{name}': no output name in common; outputs paired by position: " + ", ".join(
        f"{r} ~ {c}" for r, c in zip(ref_names, cand_names)))
    return {r: cand_out[c] for r, c in zip(ref_names, cand_names) if c in cand_out}


def _missing(output, candidate_path, cand_view):
    """Why `output` cannot be compared: missing, and, where the candidate returns `<output>_0`, `<output>_1`, ...
    without the record optimize --split-outputs writes, that those parts are not tied to it."""
    parts = [o for o in cand_view.main.outputs if o.startswith(f"{output}_") and o[len(output) + 1:].isdigit()]
    if not parts:
        return f"output missing in {candidate_path}"
    return (f"output missing in {candidate_path}, which returns {', '.join(parts)}: no optimize --split-outputs record "
            "in its metadata says how they form it, so they are not compared with it")


def _reassembled(report, name, ref, cand, ref_view, cand_out):
    """The candidate's outputs with those `optimize --split-outputs` split (recorded in a model's metadata,
    rewrites/output_parts.METADATA_KEY) put in the reference's form: the parts concatenated along the recorded
    axis where the reference has the whole output, or the whole output cut into the parts where the reference
    has them. A note names each; an output the record does not fit stays missing, and fails as such."""
    wanted, out = list(ref_view.main.outputs), dict(cand_out)
    for output, entry in recorded_splits(cand.spec).get(name, {}).items():
        parts, axis = entry["parts"], entry["axis"]
        if output not in wanted or output in out or not all(p in out for p in parts):
            continue
        try:
            out[output] = np.concatenate([out[p] for p in parts], axis=axis)
        except (ValueError, np.exceptions.AxisError):
            continue
        report.notes.append(f"function '{name}': '{output}' compared as {', '.join(parts)} concatenated along axis "
                            f"{axis} in order, as optimize --split-outputs recorded in {cand.path}")
    for output, entry in recorded_splits(ref.spec).get(name, {}).items():
        parts, axis, sizes = entry["parts"], entry["axis"], entry.get("sizes")
        whole = out.get(output)
        if whole is None or not all(p in wanted and p not in out for p in parts) or not isinstance(sizes, list) \
                or len(sizes) != len(parts) or not -whole.ndim <= axis < whole.ndim or sum(sizes) != whole.shape[axis]:
            continue
        bounds = np.cumsum([0, *sizes])
        for part, begin, end in zip(parts, bounds, bounds[1:]):
            out[part] = np.take(whole, np.arange(begin, end), axis=axis)
        report.notes.append(f"function '{name}': '{output}' compared as its parts {', '.join(parts)} along axis {axis}, "
                            f"as optimize --split-outputs recorded in {ref.path}")
    return out


def _state_inputs(function):
    """The names of a function's state inputs (iOS18 `ct.StateType`), in declaration order."""
    return [i.name for i in function.inputs if i.type.WhichOneof("type") == "stateType"]


def _run(package, view, blobs, feeds, states=()):
    """The function's outputs and the final value of each of `states`, or CannotVerify naming the package when the
    interpreter cannot run it."""
    try:
        return run_function(view, blobs, feeds, keep=states)
    except InterpreterError as e:
        raise CannotVerify(package.path, f"cannot be verified: function '{view.name}': {e}") from None


def _signature(function):
    return [(i.name, i.type.SerializeToString(deterministic=True)) for i in function.inputs]


def _precision(view):
    """numpy dtype of the narrowest float the function computes in."""
    dtypes = {t.tensorType.dataType for t in view.types.values() if t.WhichOneof("type") == "tensorType"}
    return NUMPY[FLOAT16] if FLOAT16 in dtypes else NUMPY[FLOAT32]


def _accumulation_notes(view):
    """Each rule's word on its matches under fp16 accumulation (the RMSNorm rule: where each side overflows)."""
    return [note for c in find_candidates(view) if c.match is not None and (note := c.rule.accumulation_note(view, c.anchor, c.match))]
