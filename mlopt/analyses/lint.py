"""`mlopt lint`: a static check of every op of an ML program against the Neural Engine limits in ane_limits.py.

Nothing is run and no weight is read: every check looks at op types and the types (dtype, rank, sizes) the program
declares, through the graph view (graph/spec_graph.py). Constants (`const`, and the `constexpr_*` ops compressed
weights are decompressed by when the model is compiled) are not ops that run, so they get no finding and do not
count as ops; a value they define is not checked where an op reads it (a weight's shape shows in the output of the
op reading it). Each finding names the op by its first output, the limit and its sources, and is worded as a
risk: eligibility is not placement (ane_limits.PLACEMENT_NOTE).

The summary per function estimates how often the program would switch between the Neural Engine and another unit:
the number of producer -> consumer pairs of ops (constants left out) where one op is at risk and the other is not.
It is an estimate of where Core ML would have to cut the program, not a count of what it does: Core ML may run
ops without findings elsewhere too, and group small islands with their neighbours.
"""

import os
from collections import Counter
from dataclasses import dataclass, field

from ..errors import BadInputError
from ..graph import SpecGraph
from ..graph.dtypes import DT, FLOAT32
from . import ane_limits as limits

ORDER = list(limits.LIMITS)  # findings of one op are listed in the table's order
_NARROW_INTS = {DT.Value(n) for n in limits.ANE_INTEGER_TYPES}
_INTS = {v for n, v in DT.items() if n.startswith(("INT", "UINT"))} - _NARROW_INTS


@dataclass
class Finding:
    function: str
    op: str  # the op's first output (what a report and Xcode show), or its name if it has none
    op_type: str
    code: str  # a key of ane_limits.LIMITS
    detail: str  # what the op does that the limit is about: "output 'logits' is (1, 1, 16385)"
    sources: list  # the URLs the limit rests on for this op

    @property
    def limit(self):
        return limits.LIMITS[self.code].limit

    def to_dict(self):
        return dict(op=self.op, op_type=self.op_type, code=self.code, detail=self.detail, limit=self.limit,
                    risk=limits.RISK, sources=list(self.sources))


@dataclass
class FunctionLint:
    name: str
    opset: str
    ops: int  # ops that run (constants excluded)
    findings: list = field(default_factory=list)
    switches: int = 0  # estimated places the program would switch units (module docstring)

    @property
    def at_risk(self):
        return len({f.op for f in self.findings})

    @property
    def by_reason(self):
        """Code -> ops with a finding of that code, in the table's order."""
        counts = Counter(f.code for f in self.findings)
        return {code: counts[code] for code in ORDER if counts[code]}

    def to_dict(self):
        return dict(name=self.name, opset=self.opset, ops=self.ops, at_risk=self.at_risk, by_reason=self.by_reason,
                    switches=self.switches, findings=[f.to_dict() for f in self.findings])


def is_constant_op(op):
    """A constant, or the decompression of one (`constexpr_*`): folded when the model is compiled, not run."""
    return op.type == "const" or op.type.startswith("constexpr_")


def lint_function(view):
    """Every finding of one function (a SpecGraph), in program order, and its summary."""
    report = FunctionLint(name=view.name, opset=view.opset, ops=0)
    risky, edges = set(), set()
    for op in view.ops():
        if is_constant_op(op):
            continue
        report.ops += 1
        tensors = list(_tensors(view, op))
        found = [f for f in (check(view, op, tensors) for check in CHECKS) if f is not None]
        for code, detail, sources in found:
            report.findings.append(Finding(view.name, _output_name(view, op), op.type, code, detail, [s.url for s in sources]))
        if found:
            risky.add(id(op))
        for producer in _producers(view, op):
            edges.add((id(producer), id(op)))
    report.switches = sum((a in risky) != (b in risky) for a, b in edges)
    return report


def changes(before, after):
    """What a rewrite did to one function's findings (FunctionLints of the function before and after): the findings
    it fixed, those that remain and those it introduced, matched by op output name and code, each as a compact dict
    (op, op_type, code, detail; a remaining one now on another op type says which it was on: `was`). A rewrite keeps the names of the values it replaces, so a finding on a replaced
    value that persists is "remaining", whatever op now defines it."""

    def keyed(report):
        return {(f.op, f.code): f for f in report.findings}

    old, new = keyed(before), keyed(after)

    def compact(findings):
        return [dict(op=f.op, op_type=f.op_type, code=f.code, detail=f.detail) for f in findings]

    def moved(key, f):  # a finding now on another op type than before (a split head's concat took its name)
        d = compact([f])[0]
        if old[key].op_type != f.op_type:
            d["was"] = old[key].op_type
        return d

    return dict(
        fixed=compact(f for k, f in old.items() if k not in new),
        remaining=[moved(k, f) for k, f in new.items() if k in old],
        introduced=compact(f for k, f in new.items() if k not in old),
    )


def rewrite_changes(view):
    """Lint one function before `optimize` rewrites it; returns `finish(rewritten view, or None if nothing was
    rewritten)`, which gives `changes` between then and after (the engine's `lint` hook)."""
    before = lint_function(view)
    return lambda rewritten: changes(before, lint_function(rewritten) if rewritten is not None else before)


def lint_spec(spec, functions=None):
    """One FunctionLint per function of `spec` (a validated ML program), sorted by name; `functions` limits them."""
    names = sorted(spec.mlProgram.functions)
    return [lint_function(SpecGraph(n, spec.mlProgram.functions[n])) for n in names if functions is None or n in functions]


def lint(model, function=None):
    """Lint a model: a path to an `.mlpackage` or a `coremltools.models.MLModel`; returns a LintReport.

    `function` (a name or a list of names) limits the check to those functions of a multifunction model; a name
    the model does not hold is bad input. Nothing is written, run or read beyond the model's spec.
    """
    from .lint_report import LintReport

    functions = None if function is None else [function] if isinstance(function, str) else list(function)
    if hasattr(model, "get_spec"):
        from ..graph.validate import validate_program
        from ..package.reader import check_ml_program

        source = getattr(model, "package_path", None) or "<in-memory model>"
        spec = model.get_spec()
        check_ml_program(spec, source)
        validate_program(spec, source)
    else:
        from .source import check_weights, read_validated

        source = os.fspath(model)
        package = read_validated(source)
        try:  # lint reads no weight, but a damaged weight file is bad input for every command alike
            check_weights(package)
        finally:
            package.close()
        spec = package.spec
    missing = sorted(set(functions or ()) - set(spec.mlProgram.functions))
    if missing:
        held = ", ".join(sorted(spec.mlProgram.functions))
        raise BadInputError(source, f"has no function '{missing[0]}' (its functions: {held})")
    return LintReport(input=source, functions=lint_spec(spec, functions))


# -- the checks: each returns (code, detail, sources) or None ---------------------------------------------------------
@dataclass(frozen=True)
class _Tensor:
    name: str
    role: str  # "output" or "input"
    dtype: int
    shape: tuple  # sizes, None where unknown

    def __str__(self):
        return f"{self.role} '{self.name}'"

    @property
    def shape_text(self):
        return "(" + ", ".join("?" if d is None else str(d) for d in self.shape) + (",)" if len(self.shape) == 1 else ")")


def _dim_over(view, op, tensors):
    for t in tensors:
        for axis, size in enumerate(t.shape):
            if size is not None and size > limits.MAX_DIM:
                return "dim-over-16384", f"{t} is {t.shape_text}: {size} along axis {axis}", limits.LIMITS["dim-over-16384"].sources
    return None


def _rank_over(view, op, tensors):
    for t in tensors:
        if len(t.shape) > limits.MAX_RANK:
            return "rank-over-5", f"{t} has rank {len(t.shape)}", limits.LIMITS["rank-over-5"].sources
    return None


def _int_arith(view, op, tensors):
    if op.type not in limits.ARITHMETIC_OPS:
        return None
    for t in tensors:
        if t.dtype in _INTS:
            return "int-arith", f"computes on {DT.Name(t.dtype).lower()} ({t})", limits.LIMITS["int-arith"].sources
    return None


def _large_gather(view, op, tensors):
    if op.type not in limits.GATHER_OPS:
        return None
    rows = _gathered_rows(view, op)
    if rows is not None and rows > limits.MAX_DIM:
        return "large-gather", f"gathers from a table of {rows} rows", limits.LIMITS["large-gather"].sources
    return None


def _dynamic_shape(view, op, tensors):
    for t in tensors:
        if None in t.shape:
            return "dynamic-shape", f"{t} is {t.shape_text}: a size known only at run time", limits.LIMITS["dynamic-shape"].sources
    return None


def _fp32(view, op, tensors):
    if op.type == "cast":  # a conversion at the edge of fp32 inputs and outputs, not fp32 arithmetic (docs/lint.md)
        return None
    for t in tensors:
        if t.dtype == FLOAT32:
            return "fp32", f"{t} is fp32", limits.LIMITS["fp32"].sources
    return None


def _unsupported(view, op, tensors):
    known = limits.UNSUPPORTED_OPS.get(op.type)
    if known is None or _large_gather(view, op, tensors) is not None:  # a large gather has its own code
        return None
    what, why, sources = known
    return "unsupported-op", f"{what} ({why})", sources


CHECKS = (_dim_over, _rank_over, _int_arith, _large_gather, _dynamic_shape, _fp32, _unsupported)  # in ORDER


# -- reading the op ---------------------------------------------------------------------------------------------------
def _output_name(view, op):
    """The op's first output; its name attribute for an op without outputs (`write_state`)."""
    return op.outputs[0].name if op.outputs else view.op_name(op)


def _tensors(view, op):
    """The op's tensor outputs, then the tensors it reads that no constant defines (each once)."""
    seen = set()
    for out in op.outputs:
        t = _tensor(out.name, "output", out.type)
        if t is not None:
            seen.add(out.name)
            yield t
    for argument in op.inputs.values():
        for binding in argument.arguments:
            if binding.WhichOneof("binding") != "name" or binding.name in seen:
                continue
            producer = view.producer(binding.name)
            if producer is not None and is_constant_op(producer):
                continue
            seen.add(binding.name)
            t = _tensor(binding.name, "input", view.types.get(binding.name))
            if t is not None:
                yield t


def _tensor(name, role, value_type):
    if value_type is None or value_type.WhichOneof("type") != "tensorType":
        return None
    tensor_type = value_type.tensorType
    shape = tuple(int(d.constant.size) if d.WhichOneof("dimension") == "constant" else None for d in tensor_type.dimensions)
    return _Tensor(name, role, tensor_type.dataType, shape)


def _producers(view, op):
    """The ops (constants excluded) whose outputs this op reads."""
    for argument in op.inputs.values():
        for binding in argument.arguments:
            if binding.WhichOneof("binding") == "name":
                producer = view.producer(binding.name)
                if producer is not None and not is_constant_op(producer):
                    yield producer


def _gathered_rows(view, op):
    """The largest size of the gather table along the axes the indices select, or None if unknown."""
    table_type = _input_type(view, op, limits.GATHER_OPS[op.type])
    if table_type is None or table_type.WhichOneof("type") != "tensorType":
        return None
    table = _tensor("x", "input", table_type)
    rank = len(table.shape)
    if rank == 0:
        return None
    batch = _int_const(view, op, "batch_dims", 0)
    if op.type == "gather_nd":
        indices = _input_type(view, op, "indices")
        depth = None
        if indices is not None and indices.WhichOneof("type") == "tensorType" and indices.tensorType.rank:
            last = indices.tensorType.dimensions[indices.tensorType.rank - 1]
            depth = int(last.constant.size) if last.WhichOneof("dimension") == "constant" else None
        axes = range(batch, min(rank, batch + depth) if depth is not None else rank)
    else:
        axes = [_int_const(view, op, "axis", 0) % rank]
    sizes = [table.shape[a] for a in axes if 0 <= a < rank and table.shape[a] is not None]
    return max(sizes) if sizes else None


def _input_type(view, op, param):
    argument = op.inputs.get(param)
    if argument is None or not argument.arguments:
        return None
    binding = argument.arguments[0]
    return view.types.get(binding.name) if binding.WhichOneof("binding") == "name" else binding.value.type


def _int_const(view, op, param, default):
    value = view.const(op, param)
    try:
        return int(value.reshape(-1)[0]) if value is not None and value.size else default
    except (TypeError, ValueError, OverflowError):
        return default
