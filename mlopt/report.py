"""What `optimize` did, for people (`render`) and machines (`to_dict`, printed by `--json`).

Per function: every candidate chain some rule recognised (rules/), rewritten or left alone with the reason,
and the change by op type (count before and after, constants excluded), like onnxsim's before/after table. A dry
run reports what a real run would do: the same chains, statuses "would rewrite", the same op table.

JSON (`to_dict`) follows `mlopt/report.schema.json` (schema version SCHEMA): numbers are always numbers; a value
that is not finite (an fp16 chain's error where x^2 overflowed) is written as null, with `<name>_nonfinite`
beside it holding "inf", "-inf" or "nan".
"""

import math
from collections import Counter
from dataclasses import asdict, dataclass, field

SCHEMA = 1
REWRITTEN, WOULD_REWRITE, MATCHED, LEFT_ALONE = "rewritten", "would rewrite", "matched", "left alone"
INSPECT_OMITS = ("output", "written", "copy_method", "housekeeping", "dry_run", "audit", "interface_changed")  # optimize-only fields


@dataclass
class ChainReport:
    anchor: str  # the op the chain was found at
    form: str  # the ops walked, e.g. "pow -> reduce_mean -> add -> rsqrt -> mul -> mul(gamma)"
    status: str  # REWRITTEN, WOULD_REWRITE (dry run), MATCHED (compute units that do not rewrite) or LEFT_ALONE
    reason: str = None  # why it was left alone
    ops: list = None  # names of the ops the chain walked through
    rule: str = None  # the rule's name ("rms_norm")
    kind: str = None  # what the rule calls a match ("RMSNorm")
    x: str = None  # the tensor the chain reads
    output: str = None  # the value the chain defines (kept by the rewrite)
    dtype: str = None
    summary: str = None  # the rule's reading of a match: "axes 2, eps 1e-06"
    error: float = None  # self-check: worst relative error of the rewrite against the rule's float64 reference
    original_error: float = None  # the same measure for the original chain (inf where fp16 x^2 overflowed)
    note: str = None  # what the rewrite changes beyond the arithmetic (e.g. an inflated eps made true)
    replacement: list = None  # op types the rewrite puts in place of the chain (--verbose)
    fields: dict = field(default_factory=dict)  # the rule's own fields (axes, epsilon), flat in JSON
    operands: dict = field(default_factory=dict)  # the rule's tensor operands (gamma -> value name), flat in JSON

    def __getattr__(self, name):  # chain.axes, chain.gamma: the rule's fields read like the common ones
        for held in ("fields", "operands"):
            values = self.__dict__.get(held)
            if values is not None and name in values:
                return values[name]
        raise AttributeError(name)

    def to_dict(self):
        d = asdict(self)
        fields, operands = d.pop("fields"), d.pop("operands")
        # a rule's field never replaces a common one (finite_mask's and split_wide's integer `form` param would
        # overwrite the chain's form string): it is kept as rule_<name>
        rule_fields = {(f"rule_{k}" if k in d else k): v for k, v in {**fields, **operands}.items()}
        return {**d, **rule_fields}


@dataclass
class FunctionReport:
    name: str
    opset: str
    chains: list = field(default_factory=list)
    ops: dict = field(default_factory=dict)  # op type -> [count before, count after], constants excluded
    note: str = None  # why the function has no candidates, or was not selected
    lint: dict = None  # Neural Engine lint findings the rewrite fixed, left and introduced (analyses/lint.changes)
    outputs: list = field(default_factory=list)  # rewrites/output_parts.OutputSplit: outputs returned (or returnable) as parts

    def count(self, *statuses):
        return sum(c.status in statuses for c in self.chains)

    def changed_ops(self):
        return {t: counts for t, counts in sorted(self.ops.items()) if counts[0] != counts[1]}


@dataclass
class Report:
    input: str
    output: str
    compute_units: str
    dry_run: bool = False
    written: bool = False
    copy_method: str = None  # how the unchanged files were copied: clonefile, copy_file_range, streamed copy, hard link
    note: str = None  # why nothing was rewritten, when the settings say so
    functions: list = field(default_factory=list)
    housekeeping: list = field(default_factory=list)  # stale working folders of dead runs removed beside OUT
    audit: dict = None  # `optimize --audit`: {"before": ..., "after": ...} (AuditReport.summary of IN and OUT)

    @property
    def rewrites(self):
        """Chains rewritten (or, in a dry run, that would be)."""
        return sum(f.count(REWRITTEN, WOULD_REWRITE) for f in self.functions)

    @property
    def interface_changed(self):
        """True when a function returns other outputs than before (`--split-outputs`; in a dry run: would)."""
        return any(o.status in ("split", "would split") for f in self.functions for o in f.outputs)

    @property
    def left_alone(self):
        return sum(f.count(LEFT_ALONE) for f in self.functions)

    @property
    def candidates(self):
        return sum(len(f.chains) for f in self.functions)

    def to_dict(self):
        counts = dict(rewrites=self.rewrites, left_alone=self.left_alone, candidates=self.candidates,
                      interface_changed=self.interface_changed)
        d = asdict(self)
        if d["audit"] is None:  # only `optimize --audit` reports it
            del d["audit"]
        for f, fd in zip(self.functions, d["functions"]):
            fd["chains"] = [c.to_dict() for c in f.chains]
        return {"schema": SCHEMA, "command": "optimize", **json_safe(d), **counts}

    def to_inspect_dict(self):
        """`mlopt inspect --json`: the findings, without the fields only a run that writes has."""
        d = self.to_dict()
        for key in INSPECT_OMITS:
            d.pop(key, None)
        d["command"] = "inspect"
        return d

    # -- text ---------------------------------------------------------------------------------------------------
    def render(self, verbose=False):
        lines = [f"mlopt optimize {self.input} (compute units {self.compute_units}{', dry run' if self.dry_run else ''})"]
        if self.note:
            lines.append(f"  note: {self.note}")
        for f in self.functions:
            lines.append(f"  function {f.name} ({f.opset}): {_summary(f, dry_run=self.dry_run)}")
            for c in f.chains:
                lines += _chain_lines(c, verbose)
            lines += _op_table(f, "after (dry run)" if self.dry_run else "after")
            lines += _lint_line(f)
            lines += _output_lines(f)
        return lines_text(lines + self._footer())

    def _footer(self):
        lines = [f"  {line}" for line in self.housekeeping] + _audit_lines(self.audit)
        if self.written:
            how = "hard-linked to the input's" if self.copy_method == "hard link" else f"copied byte for byte: {self.copy_method}"
            return lines + [f"  wrote {self.output} (weights and other files {how})"]
        if self.output:
            return lines + [f"  dry run: {self.output} not written"]
        return lines

    def render_details(self):
        """`mlopt inspect`: every candidate chain, where it is, what it was read as, or why it is left alone."""
        lines = [f"mlopt inspect {self.input}"]
        for f in self.functions:
            lines.append(f"function {f.name} ({f.opset}): {_summary(f, inspect=True)}")
            for k, c in enumerate(f.chains, 1):
                verdict = c.kind if c.status != LEFT_ALONE else LEFT_ALONE
                lines.append(f"  [{k}] {verdict}: {c.form}")
                lines.append(f"      ops: {', '.join(c.ops or [])}")
                if c.status == LEFT_ALONE:
                    lines.append(f"      reason: {c.reason}")
                else:
                    operands = "".join(f", {name} {value or '-'}" for name, value in c.operands.items())
                    lines.append(f"      reads {c.x}, {c.summary}{operands}, {c.dtype}; defines {c.output}")
                    if c.error is not None:
                        lines.append(f"      self-check vs float64 {c.kind}: rewrite {c.error:.1e}, original {c.original_error:.1e}")
                if c.note:
                    lines.append(f"      note: {c.note}")
        if self.note:
            lines.append(f"note: {self.note}")
        return lines_text(lines)


def _audit_lines(audit):
    """`optimize --audit`: fp16 headroom and findings of IN and OUT (mlopt audit, same inputs)."""
    if not audit:
        return []
    if "skipped" in audit:
        return [f"  fp16 audit: not run: {audit['skipped']}"]
    lines = ["  fp16 audit (mlopt audit, same inputs):"]
    for side in ("before", "after"):
        a = audit[side]
        n = len(a["findings"])
        bits = a["min_headroom_bits"]
        head = "unbounded" if bits == math.inf else f"{bits:.1f} bits" + (f" at '{a['least_headroom_op']}'" if a["least_headroom_op"] else "")
        if not n and a.get("fp32_only"):  # as `mlopt audit` says it: an fp32 program raises no finding
            lines.append(f"    {side:<6} no finding; it computes in fp32 only (in fp16, its least headroom would be {head})")
            continue
        verdict = "fp16-safe" if not n else f"{n} finding{'s' * (n != 1)}: " + ", ".join(f"{f['kind']} at '{f['op']}'" for f in a["findings"][:3]) + (", ..." if n > 3 else "")
        lines.append(f"    {side:<6} {verdict}; least headroom {head}")
    return lines


def _summary(f, inspect=False, dry_run=False):
    """'5 candidate chains: 5 rewritten, 0 left alone', or why there are none."""
    if not f.chains:
        return f"no candidate chains ({f.note})" if f.note else "no candidate chains"
    n = len(f.chains)
    if inspect:
        kinds = Counter(c.kind for c in f.chains if c.status != LEFT_ALONE)
        parts = [f"{n} {kind}" for kind, n in kinds.items()]
    else:
        parts = [f"{f.count(s)} {s}" for s in (REWRITTEN, WOULD_REWRITE, MATCHED) if f.count(s)]
        parts = parts or [f"0 {WOULD_REWRITE if dry_run else REWRITTEN}"]
    text = f"{n} candidate chain{'s' * (n != 1)}: {', '.join(parts + [f'{f.count(LEFT_ALONE)} left alone'])}"
    return f"{text} ({f.note})" if f.note else text


def _chain_lines(c, verbose):
    if c.status == LEFT_ALONE:
        lines = [f"    {LEFT_ALONE:<14} {c.anchor}: {c.form}: {c.reason}"]
    else:
        checked = "" if c.error is None else f"; self-check vs float64: rewrite {c.error:.1e}, original {c.original_error:.1e}"
        lines = [f"    {c.status:<14} {c.anchor} -> {c.output}: {c.form} ({c.summary}, {c.dtype}{checked})"]
        if c.note:
            lines.append(f"                   note: {c.note}")
    if verbose:
        lines.append(f"                   ops: {', '.join(c.ops or [])}")
        if c.replacement:
            lines.append(f"                   replaced by: {' -> '.join(c.replacement)}")
    return lines


def _op_table(f, after):
    """The op types whose count changed, before and after (constants excluded)."""
    changed = f.changed_ops()
    if not changed:
        return ["    ops unchanged"] if f.chains else []
    width = max(len("op type"), *(len(t) for t in changed))
    lines = [f"    {'op type':<{width}}  before  {after}"]
    lines += [f"    {t:<{width}}  {before:>6}  {now:>{len(after)}}" for t, (before, now) in changed.items()]
    return lines


def _lint_line(f):
    """'lint: 4 findings fixed (fp32 4), 2 remain (fp32 2)', and where a remaining one moved to another op (a split
    head's concat: 'dim-over-16384 now on concat 'logits' (was linear)'), when the function has Neural Engine lint findings
    before or after (mlopt lint lists them)."""
    if not f.lint or not any(f.lint.values()):
        return []

    def counted(findings):
        by_code = Counter(x["code"] for x in findings)
        return f" ({', '.join(f'{code} {n}' for code, n in sorted(by_code.items()))})" if findings else ""

    fixed, remaining, introduced = f.lint["fixed"], f.lint["remaining"], f.lint["introduced"]
    line = f"    lint: {len(fixed)} finding{'s' * (len(fixed) != 1)} fixed{counted(fixed)}, "
    line += f"{len(remaining)} remain{'s' * (len(remaining) == 1)}{counted(remaining)}"
    moved = [x for x in remaining if "was" in x]  # now on another op: a split head's finding on its concat
    if moved:
        line += ", " + ", ".join(f"{x['code']} now on {x['op_type']} '{x['op']}' (was {x['was']})" for x in moved[:3])
        line += ", ..." if len(moved) > 3 else ""
    if introduced:
        line += f", {len(introduced)} introduced{counted(introduced)}"
    return [line + " (mlopt lint lists them)"]


def _output_lines(f):
    """What became of each function output a split could return as parts (rewrites/output_parts.py)."""
    lines = []
    for o in f.outputs:
        ranges = ", ".join(f"{name} [{sum(o.sizes[:i])}:{sum(o.sizes[:i + 1])}]" for i, name in enumerate(o.parts))
        if o.status in ("split", "would split"):
            where = f"described in {', '.join(o.descriptions)}" if o.descriptions else "no model description lists this function"
            verb = "is now" if o.status == "split" else "would be"
            lines.append(f"    interface changed: output '{o.output}' {verb} {len(o.parts)} outputs along axis {o.axis}: {ranges}")
            lines.append(f"                   to get '{o.output}' back, {o.reassembly()} ({where}; "
                         "recorded in the metadata for mlopt verify)")
        elif o.status == "available":
            lines.append(f"    output '{o.output}' is reassembled by a concat as wide as the head was; --split-outputs "
                         f"returns its {len(o.parts)} parts as separate outputs {', '.join(o.parts)} instead")
        else:
            lines.append(f"    --split-outputs: '{o.output}' kept whole (the concat stays): {o.reason}")
    return lines


def printable(text):
    """`text` on one line: control characters (a newline or an escape sequence inside a value name of a hostile
    model) are shown as escapes, never written to a terminal or log as they are."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


def lines_text(lines):
    return "\n".join(printable(line) for line in lines)


def json_safe(obj):
    """JSON has no inf/nan: such a number becomes null, and `<key>_nonfinite` beside it says which it was."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if isinstance(v, float) and not math.isfinite(v):
                out[k], out[f"{k}_nonfinite"] = None, "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
            else:
                out[k] = json_safe(v)
        return out
    if isinstance(obj, list):
        return [None if isinstance(v, float) and not math.isfinite(v) else json_safe(v) for v in obj]
    return obj
