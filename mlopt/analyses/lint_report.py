"""What `mlopt lint` found, for people (`render`) and machines (`to_dict`, printed by `--json`; schema in
mlopt/report.schema.json, version report.SCHEMA)."""

from dataclasses import dataclass, field

from ..report import SCHEMA, lines_text
from . import ane_limits as limits


@dataclass
class LintReport:
    input: str
    functions: list = field(default_factory=list)  # of lint.FunctionLint

    @property
    def findings(self):
        return [f for fn in self.functions for f in fn.findings]

    @property
    def exit_code(self):
        """0 without findings, 1 with (the command line's exit code)."""
        return 1 if self.findings else 0

    def to_dict(self):
        used = _codes(self.findings)
        return {
            "schema": SCHEMA,
            "command": "lint",
            "input": self.input,
            "functions": [fn.to_dict() for fn in self.functions],
            "findings": len(self.findings),
            "at_risk": sum(fn.at_risk for fn in self.functions),
            "ops": sum(fn.ops for fn in self.functions),
            "limits": {code: limits.LIMITS[code].to_dict() for code in used},
            "note": limits.PLACEMENT_NOTE,
        }

    def render(self, verbose=False):
        lines = [f"mlopt lint {self.input}"]
        for fn in self.functions:
            lines.append(f"  function {fn.name} ({fn.opset}): {summary(fn)}")
            width = max((len(f.code) for f in fn.findings), default=0)
            for f in fn.findings:
                lines.append(f"    {f.code:<{width}}  {f.op} ({f.op_type}): {f.detail}: {limits.RISK}")
                if verbose:
                    lines.append(f"    {'':<{width}}  limit: {f.limit}")
                    lines += [f"    {'':<{width}}  source: {url}" for url in f.sources]
        used = _codes(self.findings)
        if used:
            lines.append("  where the limits come from (Apple documents none; docs/lint.md):")
            for code in used:
                limit = limits.LIMITS[code]
                lines.append(f"    {code}: {limit.limit}; {limit.evidence}")
                if verbose:
                    for source in limit.sources:
                        lines += [f"      {source.url}", f"        {source.title} ({source.kind})"]
                else:
                    more = f" (+{len(limit.sources) - 1} more with -v)" if len(limit.sources) > 1 else ""
                    lines.append(f"      {limit.sources[0].url}{more}")
        lines.append(f"  note: {limits.PLACEMENT_NOTE}")
        return lines_text(lines)


def summary(fn):
    """'2 of 5 ops at risk (dim-over-16384 2); 2 estimated switches between the Neural Engine and other units'."""
    if not fn.findings:
        return f"no finding in {fn.ops} op{'s' * (fn.ops != 1)}"
    reasons = ", ".join(f"{code} {n}" for code, n in fn.by_reason.items())
    switches = f"{fn.switches} estimated switch{'es' * (fn.switches != 1)} between the Neural Engine and other units"
    return f"{fn.at_risk} of {fn.ops} ops at risk ({reasons}); {switches}"


def _codes(findings):
    present = {f.code for f in findings}
    return [code for code in limits.LIMITS if code in present]
