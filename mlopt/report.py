"""What `optimize` did, for people (`render`) and machines (`to_dict`, printed by `--json`).

Per function: every RMSNorm-like chain found, rewritten or left alone with the reason, and the op counts.
"""

import math
from dataclasses import asdict, dataclass, field


@dataclass
class ChainReport:
    anchor: str  # the reduce op the chain was found at
    form: str  # the ops walked, e.g. "pow -> reduce_mean -> add -> rsqrt -> mul -> mul(gamma)"
    status: str  # "rewritten", "would rewrite" (dry run, other compute units) or "left alone"
    reason: str = None  # why it was left alone
    ops: list = None  # names of the ops the chain walked through
    x: str = None  # the normalised tensor
    gamma: str = None  # the weight multiplied in, if any
    output: str = None  # the value the chain defines (kept by the rewrite)
    axes: list = None
    epsilon: float = None
    dtype: str = None
    error: float = None  # self-check: worst relative error of the rewrite against the chain's float64 meaning
    original_error: float = None  # the same measure for the original chain (inf where fp16 x^2 overflowed)
    note: str = None  # what the rewrite changes beyond the arithmetic (e.g. an inflated eps made true)


@dataclass
class FunctionReport:
    name: str
    opset: str
    chains: list = field(default_factory=list)
    ops_removed: int = 0
    ops_added: int = 0

    def count(self, status):
        return sum(c.status == status for c in self.chains)


@dataclass
class Report:
    input: str
    output: str
    compute_units: str
    written: bool = False
    copy_method: str = None  # how the unchanged files were copied: clonefile, copy_file_range, streamed copy, hard link
    note: str = None  # why nothing was rewritten, when the settings say so
    functions: list = field(default_factory=list)
    housekeeping: list = field(default_factory=list)  # stale working folders of dead runs removed beside OUT

    @property
    def rewrites(self):
        return sum(f.count("rewritten") for f in self.functions)

    @property
    def left_alone(self):
        return sum(f.count("left alone") for f in self.functions)

    def to_dict(self):
        d = json_safe(asdict(self))
        d["rewrites"] = self.rewrites
        d["left_alone"] = self.left_alone
        return d

    def render(self):
        lines = [f"mlopt optimize {self.input} (compute units {self.compute_units})"]
        if self.note:
            lines.append(f"  note: {self.note}")
        for f in self.functions:
            found = len(f.chains)
            done = f"{f.count('would rewrite')} would rewrite" if f.count("would rewrite") else f"{f.count('rewritten')} rewritten"
            lines.append(
                f"  function {f.name} ({f.opset}): {found} RMSNorm chain{'s' * (found != 1)} found: {done}, "
                f"{f.count('left alone')} left alone; ops removed {f.ops_removed}, added {f.ops_added}"
            )
            for c in f.chains:
                if c.status == "left alone":
                    lines.append(f"    left alone     {c.anchor}: {c.form}: {c.reason}")
                else:
                    checked = "" if c.error is None else f"; self-check vs float64: rewrite {c.error:.1e}, original {c.original_error:.1e}"
                    axes = ",".join(map(str, c.axes))
                    lines.append(
                        f"    {c.status:<14} {c.anchor} -> {c.output}: {c.form} (axes {axes}, eps {c.epsilon:.3g}, {c.dtype}{checked})"
                    )
                    if c.note:
                        lines.append(f"                   note: {c.note}")
        return "\n".join(lines + self._footer())

    def _footer(self):
        lines = [f"  {line}" for line in self.housekeeping]
        if self.written:
            return lines + [f"  wrote {self.output} (weights and other files copied byte for byte: {self.copy_method})"]
        if self.output:
            return lines + [f"  dry run: {self.output} not written"]
        return lines

    def render_details(self):
        """`mlopt inspect`: every RMSNorm-like chain, where it is, what it was read as, or why it is left alone."""
        lines = [f"mlopt inspect {self.input}"]
        for f in self.functions:
            lines.append(f"function {f.name} ({f.opset}): {len(f.chains)} RMSNorm-like chain{'s' * (len(f.chains) != 1)}")
            for k, c in enumerate(f.chains, 1):
                verdict = "RMSNorm" if c.status != "left alone" else "left alone"
                lines.append(f"  [{k}] {verdict}: {c.form}")
                lines.append(f"      ops: {', '.join(c.ops or [])}")
                if c.status == "left alone":
                    lines.append(f"      reason: {c.reason}")
                else:
                    lines.append(
                        f"      reads {c.x}, axes {c.axes}, eps {c.epsilon:.6g}, gamma {c.gamma or '-'}, {c.dtype}; "
                        f"defines {c.output}"
                    )
                    if c.error is not None:
                        lines.append(f"      self-check vs float64 RMSNorm: rewrite {c.error:.1e}, original {c.original_error:.1e}")
                if c.note:
                    lines.append(f"      note: {c.note}")
        if self.note:
            lines.append(f"note: {self.note}")
        return "\n".join(lines)


def json_safe(obj):
    """JSON has no inf/nan: write them as strings."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [json_safe(v) for v in obj]
    return obj
