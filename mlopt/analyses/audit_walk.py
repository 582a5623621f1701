"""One walk over a function, two (or three) runs side by side: the device's fp16 arithmetic and float64.

The runs step through the same program in lockstep (`Evaluator.steps`), so each op output is measured once,
while both values are held, and dropped after its last use as in any streaming run: memory follows the working
set, not the model.
- device: every value in its declared dtype, fp16 rounded after every op (the interpreter's semantics), fp16
  operands of reductions, norms, softmax and matrix products accumulated per `--accumulate`; with
  `--subnormals flush`, every fp16 subnormal an op outputs is set to zero (sign kept) before any op reads it.
- exact: every float value in float64 from the same stored constants and the same inputs, casts included.
- kept (only with flush, and only where the function has fp16 values): the device run without the flush, to tell
  whether a flush changed a result.

Runtime findings, each at the op where it starts (an op whose inputs already carried the problem is not named
again):
- overflow: an fp16 output whose float64 peak is beyond 65504, or that the device holds as inf where float64 is
  finite, while no fp16 input of the op was over.
- nonfinite: the first op output (program order) with NaN/inf where float64 has none, unless that op is already an
  overflow finding; and the first NaN if it appears later. An inf that a flushed zero caused (1/0) is no
  overflow: it is non-finite, and the flush an underflow finding.
- precision: the first fp16 output whose error against float64 passes PRECISION (verify's fp16 tolerance) while
  every float input was within it and the op multiplied the worst input error by JUMP or more.
- underflow: a flush that changes a function output: where the flushed and kept runs part (by more than
  PRECISION) on the way to an output that differs, the finding names the nearest op upstream (or that op) whose
  output was flushed.
fp32 outputs are measured (their rows tell how they would fare in fp16) but raise no runtime finding: the program
declares them fp32.

Fully masked rows: a softmax row an attention mask hides entirely is held, in the float64 run, to the uniform row
of the float32 source model (numerics/masked_rows.py, as `verify`'s float64 run) and counted (`MaskedRows`), with
what the device gives there (uniform, or NaN when the sentinel is -inf), which is measured as any other value.
"""

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from ..graph.dtypes import FLOAT16, FLOATS, name as dtype_name
from ..graph.spec_graph import read_names
from ..numerics.compare import TOLERANCES, Difference, combine, compare
from ..numerics.interpreter import Evaluator
from ..numerics.masked_rows import FullRows, softmax_axis
from .audit_report import FP16_MAX, Finding, OpRow, headroom

FP16_MIN_NORMAL = 2.0**-14  # ~6.1e-5, IEEE 754 binary16: below it (and above 0) a value is subnormal
PRECISION = TOLERANCES[np.dtype(np.float16)][0]  # 1e-2: the relative error `verify` tolerates for an fp16 model
JUMP = 4  # an op that multiplies its inputs' worst error by this much, past PRECISION, is where precision is lost


@dataclass
class MaskedRows:
    """The rows of one softmax that a mask hides entirely, and what the device gives there."""

    function: str
    op: str  # the softmax's output
    rows: int
    nan: int  # of those rows, the ones the device holds NaN in
    uneven: int  # of the others, the ones that are not uniform on the device (a score too large to be absorbed)

    def to_dict(self):
        return asdict(self)


@dataclass
class WalkResult:
    rows: list = field(default_factory=list)
    findings: list = field(default_factory=list)
    first_nonfinite: str = None
    masked: list = field(default_factory=list)  # MaskedRows, per softmax with rows masked entirely


@dataclass
class _State:
    """What the walk remembers of each value it measured (a few numbers; the arrays go)."""

    over: set = field(default_factory=set)  # fp16 values whose float64 peak is beyond 65504
    blown: set = field(default_factory=set)  # values the device holds as NaN/inf where float64 is finite
    error: dict = field(default_factory=dict)  # value -> error against float64
    origins: dict = field(default_factory=dict)  # value whose flushed and kept device runs differ -> where that began
    change: dict = field(default_factory=dict)  # such a value -> how much they differ
    flushed: dict = field(default_factory=dict)  # value -> share flushed (> 0 only)
    first_nan: str = None


def walk(view, blobs, feeds, flush=True):
    """Run `view` (a SpecGraph of one function) on `feeds` as the device and in float64; rows and findings."""
    result, state = WalkResult(), _State()
    keep = list(view.main.outputs)
    computes_fp16 = any(t.WhichOneof("type") == "tensorType" and t.tensorType.dataType == FLOAT16 for t in view.types.values())
    runs = [Evaluator(view, blobs).steps(feeds, keep), Evaluator(view, blobs, float_dtype=np.float64).steps(feeds, keep)]
    if flush and computes_fp16:
        runs.append(Evaluator(view, blobs).steps(feeds, keep))
    full_rows = FullRows(view)
    full_rows.see(feeds, list(feeds))
    for (op, denv), (_, xenv), *third in zip(*runs):
        if op.type == "const":
            continue
        position = view.position(op)
        kenv = third[0][1] if third else None
        if op.type == "softmax":
            _count_masked_rows(view, op, full_rows.hold(op, xenv), denv, xenv, result)
        full_rows.see(xenv, [o.name for o in op.outputs])
        for out in op.outputs:
            if out.type.WhichOneof("type") != "tensorType" or out.type.tensorType.dataType not in FLOATS:
                continue
            device = denv.get(out.name)
            if not isinstance(device, np.ndarray) or device.dtype.kind != "f":
                continue
            unflushed = None if kenv is None else kenv.get(out.name)
            device, m = _measure_all(device, xenv[out.name], unflushed if isinstance(unflushed, np.ndarray) else None, flush)
            denv[out.name] = device
            error = math.inf if m.error.mismatched_nonfinite else m.error.max_rel
            row = OpRow(view.name, out.name, op.type, dtype_name(out.type.tensorType.dataType), m.peak_exact,
                        m.peak_device, headroom(m.peak_exact), m.inf, m.nan, m.flushed / max(device.size, 1), error,
                        m.exact_nan)
            result.rows.append(row)
            _judge(view, op, out.name, row, position, state, result, device.size, m)
    _underflow_findings(view, state, result)
    return result


def _count_masked_rows(view, op, rows, denv, xenv, result):
    """Count a softmax's rows masked entirely (`rows`, held in the float64 run `xenv` to the fp32 source's row:
    uniform over the entries with the fewest sentinels), with what the device gives there."""
    device = denv.get(op.outputs[0].name)
    if rows is None or not isinstance(device, np.ndarray) or device.ndim != rows.ndim:
        return
    axis = softmax_axis(view, op)
    with np.errstate(invalid="ignore"):
        d, held = np.asarray(device, np.float64), np.asarray(xenv[op.outputs[0].name], np.float64)
        nan = np.any(np.isnan(d), axis=axis, keepdims=True) & rows
        off = np.any(np.abs(d - held) > ROW_TOLERANCE, axis=axis, keepdims=True)
        uneven = off & rows & ~nan
    result.masked.append(MaskedRows(view.name, op.outputs[0].name, int(rows.sum()), int(nan.sum()), int(uneven.sum())))


ROW_TOLERANCE = 2.0**-9  # a probability within 1/512 of the held row (fp16 holds 1/n to 2**-11 relative)


CHUNK = 1 << 22  # elements measured at once: float64 temporaries stay near 100 MB whatever a tensor holds


@dataclass
class _Measures:
    """What one pass over an op output's device, float64 (and unflushed) values finds."""

    flushed: int = 0
    nan: int = 0
    inf: int = 0
    new_nonfinite: int = 0  # NaN/inf on the device where float64 is finite
    new_nan: int = 0  # NaN on the device where float64 has none
    exact_nan: int = 0  # NaN in the float64 run itself (a stored -inf times 0): no yardstick there
    peak_exact: float = 0.0
    peak_device: float = 0.0
    error: Difference = None  # device against float64, as `verify` compares
    flush_change: Difference = None  # device (flushed) against the unflushed run


def _measure_all(device, exact, kept, flush):
    """Flush `device` (fp16) in place of a copy if asked, and measure it against `exact` (and `kept`), slice by
    slice. Returns (the device values to go on with, _Measures)."""
    m = _Measures()
    if exact.shape != device.shape:  # one program, two runs: cannot happen unless an op implementation is wrong
        m.error, m.new_nonfinite = compare(device, exact), 0
        return device, m
    owned = False  # the interpreter's arrays may be views of others: a flush writes into a copy of our own
    d, x = device.reshape(-1), exact.reshape(-1)
    k = kept.reshape(-1) if kept is not None and kept.shape == device.shape else None
    errors, changes = [], []
    with np.errstate(all="ignore"):
        for start in range(0, max(d.size, 1), CHUNK):
            dc, xc = d[start:start + CHUNK], x[start:start + CHUNK]
            if flush and dc.dtype == np.float16:
                magnitude = np.abs(dc)
                subnormal = (magnitude < FP16_MIN_NORMAL) & (magnitude > 0)
                count = int(np.count_nonzero(subnormal))
                if count:
                    if not owned:
                        device, owned = device.copy(), True
                        d = device.reshape(-1)
                        dc = d[start:start + CHUNK]
                    m.flushed += count
                    dc[subnormal] = np.copysign(np.float16(0), dc[subnormal])
            nan, finite_d, finite_x = np.isnan(dc), np.isfinite(dc), np.isfinite(xc)
            m.nan += int(np.count_nonzero(nan))
            m.inf += int(np.count_nonzero(~finite_d & ~nan))
            m.new_nonfinite += int(np.count_nonzero(~finite_d & finite_x))
            m.new_nan += int(np.count_nonzero(nan & ~np.isnan(xc)))
            m.exact_nan += int(np.count_nonzero(np.isnan(xc)))
            m.peak_exact = max(m.peak_exact, _peak(xc, finite_x))
            m.peak_device = max(m.peak_device, _peak(dc, finite_d))
            errors.append(compare(dc, xc))
            if k is not None:
                changes.append(compare(dc, k[start:start + CHUNK]))
    m.error = combine(errors)
    m.flush_change = combine(changes) if k is not None else None
    return device, m


def _peak(values, finite):
    chosen = np.abs(values[finite])
    return float(chosen.max()) if chosen.size else 0.0


def _judge(view, op, name, row, position, state, result, size, m):
    inputs = read_names(op)
    fp16 = row.dtype == "fp16"
    new_nonfinite, new_nan = m.new_nonfinite, m.new_nan
    fresh = not any(i in state.blown for i in inputs)
    overflowed = False
    if fp16 and row.peak_abs_fp64 > FP16_MAX:
        state.over.add(name)
        if not any(i in state.over for i in inputs):
            overflowed = True
            shows = f"; the device holds {row.inf} inf" if row.inf else ""
            result.findings.append(Finding("overflow", name, op.type, (
                f"float64 peak {row.peak_abs_fp64:.3g} is beyond fp16's largest finite value 65504 "
                f"({-row.headroom_bits:.1f} bits over){shows}"), view.name, position))
    if new_nonfinite:
        state.blown.add(name)
        flushed_in = any(i in state.origins for i in inputs)  # a flushed 0 divided: not an overflow
        if fp16 and not overflowed and row.inf and fresh and not flushed_in and not any(i in state.over for i in inputs):
            overflowed = True
            result.findings.append(Finding("overflow", name, op.type, (
                f"the device holds {row.inf} inf where float64 stays finite (float64 peak {row.peak_abs_fp64:.3g})"),
                view.name, position))
        named = overflowed
        if result.first_nonfinite is None:
            result.first_nonfinite = name
            if not named:
                named = True
                what = f"{new_nan} NaN" if new_nan else f"{new_nonfinite} inf"
                result.findings.append(Finding("nonfinite", name, op.type, (
                    f"first op output with NaN/inf where float64 has none: {what} of {size} elements"),
                    view.name, position))
        if new_nan and state.first_nan is None:
            state.first_nan = name
            if not named:
                result.findings.append(Finding("nonfinite", name, op.type, (
                    f"NaN first appears here: {new_nan} of {size} elements where float64 has none; every "
                    f"value computed from them is NaN"), view.name, position))
    state.error[name] = row.error
    flush_caused = row.flushed > 0 or any(i in state.origins for i in inputs)  # an underflow, judged on its own
    if fp16 and not flush_caused and math.isfinite(row.error) and row.error > PRECISION and not any(f.kind == "precision" for f in result.findings):
        worst = max((state.error.get(i, 0.0) for i in inputs), default=0.0)
        if worst <= PRECISION and row.error >= JUMP * worst:
            result.findings.append(Finding("precision", name, op.type, (
                f"error against float64 jumps to {row.error:.2g} (inputs within {worst:.2g}; an fp16 model is held "
                f"to {PRECISION:g})"), view.name, position))
    if row.flushed:
        state.flushed[name] = row.flushed
    if m.flush_change is not None:
        _flush_effect(name, inputs, m.flush_change, state)


def _flush_effect(name, inputs, difference, state):
    """Track where the flushed and kept device runs part: a value whose two runs differ beyond PRECISION
    remembers the ops where the difference started (an op that differs while none of its inputs did)."""
    if not difference.mismatched_nonfinite and difference.max_rel <= PRECISION:
        return
    origins = set().union(*(state.origins[i] for i in inputs if i in state.origins))
    state.origins[name] = origins or {name}
    state.change[name] = "NaN/inf" if difference.mismatched_nonfinite else f"max rel {difference.max_rel:.2g}"


def _underflow_findings(view, state, result):
    """One underflow finding per op whose flush changes a function output: named at the nearest op upstream of
    (or at) where the runs part that flushed values."""
    named = set()
    for out in view.main.outputs:
        for origin in sorted(state.origins.get(out, ()), key=lambda v: view.position(view.producer(v))):
            culprit = _nearest_flush(view, origin, state.flushed)
            if culprit is None or culprit in named:
                continue
            named.add(culprit)
            op = view.producer(culprit)
            result.findings.append(Finding("underflow", culprit, op.type, (
                f"{state.flushed[culprit]:.2%} of its values are fp16 subnormals, flushed to zero; kept, the output "
                f"'{out}' would differ ({state.change[out]}): the flush changes the result"),
                view.name, view.position(op)))


def _nearest_flush(view, name, flushed):
    """The value nearest upstream of `name` (itself first, breadth first) whose device run flushed subnormals."""
    frontier, seen = [name], {name}
    while frontier:
        for value in frontier:
            if value in flushed:
                return value
        following = []
        for value in frontier:
            op = view.producer(value)
            if op is None:
                continue
            for read in read_names(op):
                if read not in seen:
                    seen.add(read)
                    following.append(read)
        frontier = following
    return None

