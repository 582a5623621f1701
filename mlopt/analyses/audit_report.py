"""What `mlopt audit` found, for people (`render`) and machines (`to_dict`, `--json`, mlopt/report.schema.json).

The human report opens with a verdict line (fp16-safe, or N findings), then the findings in program order, then
the K op outputs with the least headroom. JSON carries every op output's row; a number that is not finite (an
error of inf, the headroom of an all-zero value) is null with `<name>_nonfinite` beside it, as in the other
commands' reports.
"""

import math
from dataclasses import asdict, dataclass, field
from ..numerics.masked_rows import MASKED

FP16_MAX = 65504.0  # fp16's largest finite value (IEEE 754 binary16)
KINDS = ("overflow", "nonfinite", "precision", "underflow", "static")


@dataclass
class Finding:
    kind: str  # one of KINDS
    op: str  # the op output the finding is about (a const's value name for static hazards)
    op_type: str
    detail: str  # one line, in words a user understands
    function: str = "main"
    position: int = 0  # the op's place in the program: findings are listed in program order

    def to_dict(self):
        return dict(kind=self.kind, op=self.op, op_type=self.op_type, detail=self.detail, function=self.function)


@dataclass
class OpRow:
    """The measures of one op output (float tensors of the main block)."""

    function: str
    op: str  # the output's name
    op_type: str
    dtype: str  # "fp16" or "fp32": what the program declares (fp32 values are not rounded to fp16 on the device run)
    peak_abs_fp64: float  # max |x| of the float64 run (finite values)
    peak_abs_device: float  # max |x| of the device run (finite values)
    headroom_bits: float  # log2(65504 / peak_abs_fp64): bits to spare before fp16 overflows (negative: over)
    inf: int  # elements the device run holds as +-inf
    nan: int  # elements the device run holds as NaN
    flushed: float  # share of the elements that were fp16 subnormals flushed to zero (0 with --subnormals keep)
    error: float  # max |device - float64| / max |float64|, as `verify` measures (inf: NaN/inf where float64 has none)
    nan_fp64: int = 0  # elements the float64 run itself holds as NaN: its peak counts only the others

    def to_dict(self):
        return asdict(self)


def headroom(peak):
    """Bits between `peak` and fp16's largest finite value: log2(65504 / peak); inf for a value that is all 0."""
    return math.log2(FP16_MAX / peak) if peak > 0 else math.inf


@dataclass
class AuditReport:
    model: str
    seed: int = 0
    scale: float = 1.0
    accumulate: str = "fp32"
    subnormals: str = "flush"
    top: int = 10
    functions: list = field(default_factory=list)  # the functions audited
    notes: list = field(default_factory=list)  # which inputs were used and how they were drawn
    findings: list = field(default_factory=list)
    rows: list = field(default_factory=list)
    first_nonfinite: str = None  # the first op output (program order) with NaN/inf where float64 has none
    masked: list = field(default_factory=list)  # audit_walk.MaskedRows: softmax rows a mask hides entirely
    outputs: dict = field(default_factory=dict)  # function -> its output names (for what NaN in float64 reaches)

    @property
    def passed(self):
        return not self.findings

    @property
    def peak_abs_fp64(self):
        return max((r.peak_abs_fp64 for r in self.rows), default=0.0)

    @property
    def min_headroom_bits(self):
        return headroom(self.peak_abs_fp64) if self.rows else math.inf

    def least_headroom(self, k=None):
        """The `k` rows with the least headroom (largest float64 peak), ties in program order."""
        ranked = sorted(self.rows, key=lambda r: -r.peak_abs_fp64)
        return ranked[: self.top if k is None else k]

    def sorted_findings(self):
        return sorted(self.findings, key=lambda f: (self.functions.index(f.function) if f.function in self.functions else 0, f.position))

    @property
    def fp32_only(self):
        """The program computes in fp32 only: its rows say how it would fare in fp16, no finding is raised."""
        return bool(self.rows) and not any(r.dtype == "fp16" for r in self.rows)

    def verdict(self):
        if not self.findings and self.fp32_only:
            return (f"{self.model}: no finding; it computes in fp32 only (in fp16, its least headroom would be "
                    f"{_bits(self.min_headroom_bits)})")
        if not self.findings:
            return f"{self.model}: fp16-safe (no finding in {len(self.rows)} op outputs; least headroom {_bits(self.min_headroom_bits)})"
        counts = {}
        for f in self.findings:
            counts[f.kind] = counts.get(f.kind, 0) + 1
        n = len(self.findings)
        kinds = ", ".join(f"{k} {counts[k]}" for k in KINDS if k in counts)
        return f"{self.model}: {n} finding{'s' * (n != 1)} ({kinds})"

    def failure_lines(self):
        """`audit -q`: one line per finding."""
        return [f"mlopt: audit: {_where(f, self)}: {f.kind}: {f.detail}" for f in self.sorted_findings()]

    def render(self, verbose=False):
        from ..report import lines_text

        lines = [self.verdict()]
        lines.append(f"  run: seed {self.seed}, scale {self.scale:g}, fp16 accumulated in {self.accumulate}, "
                     f"subnormals {'flushed to zero' if self.subnormals == 'flush' else 'kept'}")
        lines += [f"  input: {note}" for note in self.notes]
        if self.findings:
            lines.append("  findings (program order):")
            lines += [f"    {f.kind:<9}  {_where(f, self)} ({f.op_type}): {f.detail}" for f in self.sorted_findings()]
        lines += [f"  {masked_rows_line(m, self)}" for m in self.masked]
        lines += self.float64_nan_lines()
        flushed = [r for r in self.rows if r.flushed > 0]
        if flushed:
            worst = max(flushed, key=lambda r: r.flushed)
            lines.append(f"  subnormals flushed to zero at {len(flushed)} op output{'s' * (len(flushed) != 1)} "
                         f"(largest share {worst.flushed:.2%} at '{worst.op}')")
        rows = self.rows if verbose else self.least_headroom()
        if rows:
            title = "every op output" if verbose else f"{len(rows)} op output{'s' * (len(rows) != 1)} with the least headroom"
            lines.append(f"  {title}:")
            lines += _table(rows, multi=len(self.functions) > 1)
        return lines_text(lines)

    def float64_nan_lines(self):
        """Where the float64 run itself is NaN: the program as stored computes no number there (0 times an fp16
        -inf sentinel, -inf - -inf), so float64 cannot judge the device there and the peaks count the other
        elements only (an all-NaN value has peak 0). Said per function, with the function outputs it reaches:
        a static finding names the constant, this line what it does to the outputs."""
        lines = []
        for name in self.functions:
            rows = [r for r in self.rows if r.function == name and r.nan_fp64]
            if not rows:
                continue
            first, where = rows[0], f"function '{name}': " if len(self.functions) > 1 else ""
            outputs = [f"'{r.op}' ({r.nan_fp64} elements)" for r in rows if r.op in self.outputs.get(name, ())]
            reach = f"; NaN reaches output{'s' * (len(outputs) != 1)} {', '.join(outputs)}" if outputs else ""
            lines.append(
                f"  {where}float64 itself is NaN at {len(rows)} op output{'s' * (len(rows) != 1)}, first at "
                f"'{first.op}' ({first.op_type}): the program as stored computes no number there, so nothing is judged "
                f"against float64 at those elements and their peaks are unmeasured{reach}")
        return lines

    def summary(self):
        """The short form `optimize --audit` reports for each side: verdict numbers and the findings."""
        least = self.least_headroom(1)
        return dict(model=self.model, passed=self.passed, findings=[f.to_dict() for f in self.sorted_findings()],
                    first_nonfinite=self.first_nonfinite, peak_abs_fp64=self.peak_abs_fp64,
                    min_headroom_bits=self.min_headroom_bits, least_headroom_op=least[0].op if least else None,
                    fp32_only=self.fp32_only)

    def to_dict(self):
        from ..report import SCHEMA, json_safe

        return json_safe(dict(
            schema=SCHEMA, command="audit", model=self.model, seed=self.seed, scale=self.scale,
            accumulate=self.accumulate, subnormals=self.subnormals, functions=list(self.functions), inputs=self.notes,
            passed=self.passed, findings=[f.to_dict() for f in self.sorted_findings()],
            first_nonfinite=self.first_nonfinite, peak_abs_fp64=self.peak_abs_fp64,
            min_headroom_bits=self.min_headroom_bits, fully_masked_rows=[m.to_dict() for m in self.masked],
            ops=[r.to_dict() for r in self.rows],
        ))


def masked_rows_line(m, report):
    """What the report says of one softmax's rows masked entirely (audit_walk.py: judged against the fp32 source's
    row, uniform over its entries with the fewest sentinels: numerics/masked_rows.py)."""
    where = f"{m.function}/{m.op}" if len(report.functions) > 1 else m.op
    rows = f"{m.rows} fully masked row{'s' * (m.rows != 1)} at '{where}' (every input at or below {MASKED:g})"
    if not m.nan and not m.uneven:
        return f"{rows}: fp16 gives a uniform row (the fp32 source model's behaviour), and the audit judges it so"
    parts = ([f"NaN in {m.nan}"] if m.nan else []) + ([f"a row that is not uniform in {m.uneven}"] if m.uneven else [])
    parts[-1] += " of them"
    return f"{rows}: fp16 gives {' and '.join(parts)}, where the fp32 source model gives a uniform row"


def _where(finding, report):
    return f"{finding.function}/{finding.op}" if len(report.functions) > 1 else finding.op


def _bits(bits):
    return "unbounded (all values 0)" if bits == math.inf else f"{bits:.1f} bits"


def _num(x, fmt=".3g"):
    return "inf" if x == math.inf else "nan" if x != x else format(x, fmt)


def _table(rows, multi=False):
    names = [f"{r.function}/{r.op}" if multi else r.op for r in rows]
    width = max(len("op output"), *(len(n) for n in names))
    twidth = max(len("type"), *(len(r.op_type) for r in rows))
    lines = [f"    {'op output':<{width}}  {'type':<{twidth}}  dtype  {'fp64 peak':>9}  {'device peak':>11}  {'headroom':>8}  "
             f"{'inf':>5}  {'nan':>5}  {'flushed':>7}  error vs fp64"]
    for name, r in zip(names, rows):
        lines.append(
            f"    {name:<{width}}  {r.op_type:<{twidth}}  {r.dtype:<5}  {_num(r.peak_abs_fp64):>9}  {_num(r.peak_abs_device):>11}  "
            f"{_num(r.headroom_bits, '.1f'):>8}  {r.inf:>5}  {r.nan:>5}  {r.flushed:>7.2%}  {_num(r.error, '.2g')}"
        )
    return lines
