"""Return a replacement's parts as separate function outputs (`mlopt optimize --split-outputs`).

A rule whose replacement ends in a `concat` of parts along one axis and declares `separable_output` (split_wide:
the chunks of a wide head) can, when the user asks, hand the parts to the caller instead of concatenating them:
where the concat's result is a function output, directly or through ops that act on each part alike (PER_PART),
the function returns k outputs `<output>_0 ... <output>_{k-1}` and the concat is gone. This is the form ANEMLL
ships its LM heads in (separate `logits1 ... logitsN` outputs that its runtime concatenates): the concat of a
split head is itself as wide as the head was (docs/lint.md, `dim-over-16384`).

The change is exact by construction: each part is the concat's input, and every PER_PART op computes on a slice
along the axis what it computed on the whole (a cast, an identity, a transpose, a squeeze or expand_dims or a
reshape that only adds or removes size-1 axes, an elementwise op whose other inputs are single constant numbers).
Anything else keeps the concat, with the reason.

The function's interface changes, so the model description changes with it: every description of the function
(`description.functions[name]`, and the top-level `description.output`, which describes the default function)
gets the k outputs in place of the one, each with its shape and a short description of the range it holds. A
function whose description does not list the output, lists it as something other than a multi-array, or names it
as a classifier's predicted feature keeps the concat. How to reassemble is recorded in the model's metadata
(METADATA_KEY), which `mlopt verify` reads to compare the parts with the original output.
"""

import json
from dataclasses import dataclass, field

import numpy as np

from ..graph.dtypes import INT32
from ..graph.emit import OpEmitter, retyped, string_value
from ..graph.spec_graph import SpecGraph, op_name
from ..package.proto import MIL_pb2
from .apply import const_feeders, dead_ops, rebuild_blocks

METADATA_KEY = "com.github.mlopt.split_outputs"  # JSON: {function: {output: {"axis", "parts", "sizes"}}}
MAX_RECORD = 1 << 20  # characters: a record longer than this is not one mlopt wrote
SPLIT, WOULD_SPLIT, AVAILABLE, KEPT = "split", "would split", "available", "kept whole"
RESHAPING = ("cast", "identity", "transpose", "squeeze", "expand_dims", "reshape")
# elementwise ops that act on each part alike when every other input is one constant number (Gemma 2's logit
# soft-capping, tanh(logits / 30) * 30; a temperature)
ELEMENTWISE = ("mul", "add", "sub", "real_div", "maximum", "minimum", "pow", "tanh", "sigmoid", "relu", "clip", "exp",
               "log", "sqrt", "rsqrt", "abs", "square", "inverse", "gelu", "silu", "softplus", "erf", "floor", "ceil",
               "round", "sign", "threshold")
PER_PART = RESHAPING + ELEMENTWISE


@dataclass
class OutputSplit:
    """One function output a separable replacement reaches, and what became of it."""

    output: str  # the function output (as the function named it before)
    value: str  # the replacement's result (the concat)
    rule: str
    status: str  # SPLIT, WOULD_SPLIT (dry run), AVAILABLE (without --split-outputs) or KEPT
    axis: int = None  # axis of `output` along which the parts lie
    parts: list = field(default_factory=list)  # the new outputs' names, in order
    sizes: list = field(default_factory=list)  # each part's size along `axis`
    reason: str = None  # KEPT: why
    descriptions: list = field(default_factory=list)  # which model descriptions list the parts

    def reassembly(self):
        """'concatenate logits_0, logits_1 along axis 2 in order'."""
        return f"concatenate {', '.join(self.parts)} along axis {self.axis} in order"


class OutputParts:
    """The engine's step for separable replacements (engine.optimize_spec): `split` per function after its rewrites
    are spliced, `finish` once for the model (metadata). Rule-agnostic: it reads `rule.separable_output` and
    `rule.part_text` only."""

    def __init__(self, spec, enabled=False, dry_run=False):
        self.spec, self.enabled, self.dry_run = spec, enabled, dry_run
        self.record = {}  # function -> {output: {"axis", "parts", "sizes"}}

    def split(self, name, function, kept):
        """The OutputSplit of every separable rewrite in `kept` (PlannedRewrites spliced into `function`) that
        reaches a function output; with `enabled`, applied to `function` (and, unless a dry run, to the model
        description)."""
        results = []
        for p in kept:
            if not getattr(p.rule, "separable_output", False):
                continue
            view = SpecGraph(name, function)  # fresh after each split: names and uses change
            found = _plan(view, p.rule, p.match.output)
            if found is None:
                continue
            result, path = found
            if result.status == KEPT:
                if self.enabled:
                    results.append(result)
                continue
            if not self.enabled:
                result.status = AVAILABLE
                results.append(result)
                continue
            described = self._descriptions(name)
            result.reason = _description_problem(described, result.output, view.rank(result.output))
            if result.reason is not None:
                result.status = KEPT
                results.append(result)
                continue
            _apply(view, result, path)
            result.descriptions = [where for where, _ in described]
            if self.dry_run:
                result.status = WOULD_SPLIT
            else:
                result.status = SPLIT
                for _, description in described:
                    _describe_parts(description, result, p.rule, p.match)
                self.record.setdefault(name, {})[result.output] = dict(axis=result.axis, parts=result.parts, sizes=result.sizes)
            results.append(result)
        return results

    def finish(self):
        """Record how to reassemble every split output in the model's metadata (merged with earlier runs')."""
        if not self.record:
            return
        metadata = self.spec.description.metadata.userDefined
        merged = recorded_splits(self.spec)
        for function, outputs in self.record.items():
            merged.setdefault(function, {}).update(outputs)
        metadata[METADATA_KEY] = json.dumps(merged, sort_keys=True, separators=(",", ":"))

    def _descriptions(self, name):
        """[(where, FunctionDescription or ModelDescription)] describing function `name`'s interface."""
        desc = self.spec.description
        found = [(f"description.functions['{name}']", f) for f in desc.functions if f.name == name]
        if name == (desc.defaultFunctionName or "main") and (len(desc.output) or not len(desc.functions)):
            found.append(("description.output", desc))
        return found


def recorded_splits(spec):
    """{function: {output: {"axis", "parts", "sizes"}}} as optimize --split-outputs recorded it; {} if none or if
    the metadata value is not what mlopt writes."""
    text = spec.description.metadata.userDefined.get(METADATA_KEY)
    if not text or len(text) > MAX_RECORD:
        return {}
    try:
        record = json.loads(text)
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth: not mlopt's record
        return {}
    if not isinstance(record, dict):
        return {}
    good = {}
    for function, outputs in record.items():
        if not isinstance(outputs, dict):
            continue
        for output, entry in outputs.items():
            if _well_formed(entry):
                good.setdefault(function, {})[output] = entry
    return good


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def _well_formed(entry):
    """An entry as mlopt writes it: an int axis, distinct part names (a name repeated would make verify build an
    output as large as the record is long), and sizes, where given, one non-negative int per part (anything else
    - a string, a float, a negative or huge size - would make verify fail or allocate what the record says)."""
    if not isinstance(entry, dict) or not _is_int(entry.get("axis")):
        return False
    parts, sizes = entry.get("parts"), entry.get("sizes")
    if not isinstance(parts, list) or not parts or not all(isinstance(p, str) for p in parts) or len(set(parts)) != len(parts):
        return False
    return sizes is None or (isinstance(sizes, list) and len(sizes) == len(parts)
                             and all(_is_int(n) and 0 <= n < 1 << 31 for n in sizes))


# -- finding the path ---------------------------------------------------------------------------------------------
def _plan(view, rule, value):
    """(OutputSplit, path ops) for the replacement result `value`, or None if it reaches no function output.
    A KEPT OutputSplit says why it cannot be split."""
    outputs = list(view.main.outputs)
    concat = view.producer(value)
    result = OutputSplit(output=value, value=value, rule=rule.name, status=SPLIT)

    def kept(reason):
        result.status, result.reason = KEPT, reason
        return result, []

    if concat is None or view.block(concat) is not view.main:
        return None  # a value inside a loop or branch is no function output
    path, current, seen = [], value, set()
    while current not in outputs:
        if current in seen:  # a malformed program's cycle: never loop
            return None
        seen.add(current)
        uses = view.consumers(current)
        if len(uses) != 1 or uses[0].op is None:
            kinds = ", ".join(sorted({u.op.type if u.op is not None else "a block output" for u in uses})) or "nothing"
            return kept(f"'{current}' is no function output: it is read by {len(uses)} ops ({kinds})")
        op, param = uses[0].op, uses[0].param
        if view.block(op) is not view.main or op.type not in PER_PART or not _reads_one_tensor(view, op, param):
            return kept(f"'{current}' is no function output: {op.type} '{op_name(op)}' reads it, which does not act "
                        "on each part alike")
        path.append((op, param))
        current = op.outputs[0].name
    result.output = current
    if outputs.count(current) != 1:
        return kept(f"'{current}' is returned {outputs.count(current)} times")
    readers = [u.op for u in view.consumers(current) if u.op is not None]
    if readers:
        named = ", ".join(f"{op.type} '{op_name(op)}'" for op in readers[:3])
        return kept(f"'{current}' is also read inside the function, by {named}")
    if concat.type != "concat":
        return kept("its replacement does not end in a concat")
    axis, interleave = view.const(concat, "axis"), view.const(concat, "interleave")
    if axis is None or (interleave is not None and bool(np.asarray(interleave).item())):
        return kept("its concat's axis is not a constant, or it interleaves")
    parts = view.args(concat, "values")
    rank = view.rank(value)
    axis = int(np.asarray(axis).item()) % rank
    sizes = [view.dim(part, axis) if part is not None else None for part in parts]
    if None in sizes:
        return kept("a part's size along the concat axis is unknown")
    for op, param in path:
        axis, why = _axis_after(view, op, axis, sizes, param)
        if why:
            return kept(f"'{op.outputs[0].name}' ({op.type}): {why}")
    result.axis, result.sizes = axis, sizes
    result.parts = [f"{current}_{i}" for i in range(len(parts))]
    taken = view.names_in_use() | {i.name for i in view.function.inputs}
    clash = [p for p in result.parts if p in taken]
    if clash:
        return kept(f"the function already has a value named '{clash[0]}'")
    return result, path


def _dims(view, value):
    return [view.dim(value, i) for i in range(view.rank(value))]


def _reads_one_tensor(view, op, param):
    """True if `op` reads one tensor, at `param`, and every other input is a constant of at most one element (or
    a reshaping op's shape, perm or axes): then it acts on a slice of that tensor as on the whole."""
    if param != "x" and op.type in RESHAPING:
        return False
    for other, argument in op.inputs.items():
        if other == param:
            if len(argument.arguments) != 1:
                return False
            continue
        value = view.const(op, other)
        if value is None or (op.type in ELEMENTWISE and np.asarray(value).size > 1):
            return False
    return True


def _axis_after(view, op, axis, sizes, param="x"):
    """(the parts' axis in `op`'s output, None) or (None, why `op` does not act on each part alike). `param`: the
    input reading the parts."""
    if op.type in ("cast", "identity") or op.type in ELEMENTWISE:  # a one-element constant may add leading axes
        return axis + view.rank(op.outputs[0].name) - view.rank(view.arg(op, param)), None
    if op.type == "transpose":
        perm = view.const(op, "perm")
        if perm is None:
            return None, "its perm is not a constant"
        perm = [int(p) % view.rank(view.arg(op, "x")) for p in np.asarray(perm).reshape(-1)]
        return perm.index(axis), None
    if op.type == "squeeze" and "axes" not in op.inputs and 1 in sizes:
        return None, "it squeezes every size-1 axis, and a part has size 1"
    before, after = _dims(view, view.arg(op, "x")), _dims(view, op.outputs[0].name)
    if None in before or None in after:
        return None, "its shapes are not static"
    if op.type == "reshape" and view.const(op, "shape") is None:
        return None, "its shape is not a constant"
    kept_before = [i for i, d in enumerate(before) if d != 1]
    kept_after = [i for i, d in enumerate(after) if d != 1]
    if [before[i] for i in kept_before] != [after[i] for i in kept_after] or axis not in kept_before:
        return None, "it does more than add or remove size-1 axes"
    return kept_after[kept_before.index(axis)], None


# -- applying -----------------------------------------------------------------------------------------------------
def _apply(view, split, path):
    """Splice the parts into `view`'s function as outputs: per part a copy of every path op, the last named
    `<output>_i`; the concat and the path ops go, and the constants only they read."""
    concat = view.producer(split.value)
    parts = view.args(concat, "values")
    emitter = OpEmitter(view.names_in_use() | set(split.parts))
    new_ops, renamed = [], {}
    for i, (part, name) in enumerate(zip(parts, split.parts)):
        current, axis = part, int(np.asarray(view.const(concat, "axis")).item()) % view.rank(split.value)
        for k, (op, param) in enumerate(path):
            last = k == len(path) - 1
            axis_after, _ = _axis_after(view, op, axis, split.sizes, param)
            copy = MIL_pb2.Operation()
            copy.CopyFrom(op)
            copy.inputs[param].arguments[0].name = current
            out = name if last else emitter.fresh(f"{op.outputs[0].name}_{i}")
            copy.outputs[0].name = out
            copy.outputs[0].type.CopyFrom(retyped(op.outputs[0].type, axis=axis_after, size=split.sizes[i]))
            copy.attributes["name"].CopyFrom(string_value(emitter.fresh(f"{op_name(op)}_{i}")))
            if op.type == "reshape":
                shape = _dims(view, op.outputs[0].name)
                shape[axis_after] = split.sizes[i]
                const, value = emitter.const(f"{op_name(op)}_{i}_shape", np.array(shape, np.int32), INT32)
                new_ops.append(const)
                copy.inputs["shape"].arguments[0].name = value
            new_ops.append(copy)
            current, axis = out, axis_after
        if not path:
            producer = view.producer(part)
            if producer is not None and producer.type != "const" and view.block(producer) is view.main and len(view.consumers(part)) == 1:
                renamed[part] = name
            else:
                op, _ = emitter.op("identity", {"x": part}, view.types[part], output_name=name, base=f"{name}_identity")
                new_ops.append(op)
    ops = [concat, *(op for op, _ in path)]
    doomed = {op_name(op) for op in ops}
    for op in ops:
        doomed.update(const_feeders(view, op))
    for op in view.main.operations:  # a part only the concat reads takes the output's name
        for out in op.outputs:
            if out.name in renamed:
                out.name = renamed[out.name]
    anchor = path[-1][0] if path else concat
    rebuild_blocks([view.main], lambda op: new_ops if op is anchor else [op])
    outputs = list(view.main.outputs)
    at = outputs.index(split.output)
    del view.main.outputs[:]
    view.main.outputs.extend(outputs[:at] + split.parts + outputs[at + 1:])
    spliced = SpecGraph(view.name, view.function)
    dead = dead_ops(spliced, doomed)
    rebuild_blocks(spliced.blocks, lambda op: [] if op_name(op) in dead else [op])


def _description_problem(described, output, rank):
    """Why the model description keeps `output` (of rank `rank` in the program) whole, or None."""
    for where, description in described:
        if output in (getattr(description, "predictedFeatureName", ""), getattr(description, "predictedProbabilitiesName", "")):
            return f"{where} names '{output}' as a classifier's prediction"
        features = [f for f in description.output if f.name == output]
        if len(features) != 1:
            return f"{where} does not list output '{output}' once"
        if features[0].type.WhichOneof("Type") != "multiArrayType":
            return f"{where} describes '{output}' as {features[0].type.WhichOneof('Type')}, not a multi-array"
        if len(features[0].type.multiArrayType.shape) not in (0, rank):
            return f"{where} gives '{output}' another rank than the program"
    return None


def _describe_parts(description, split, rule, match):
    """Replace `split.output`'s feature in `description.output` by one feature per part, in place and order."""
    features = list(description.output)
    at = next(i for i, f in enumerate(features) if f.name == split.output)
    original = features[at]
    total = sum(split.sizes)
    new = []
    begin = 0
    for i, (name, size) in enumerate(zip(split.parts, split.sizes)):
        feature = type(original)()
        feature.CopyFrom(original)
        feature.name = name
        array = feature.type.multiArrayType
        _resize(array, split.axis, size)
        holds = rule.part_text(match, begin, begin + size, total)
        feature.shortDescription = (f"part {i + 1} of {len(split.parts)} of '{split.output}', [{begin}:{begin + size}] along "
                                    f"axis {split.axis}: {holds}; {split.reassembly()} to get '{split.output}'")
        new.append(feature)
        begin += size
    del description.output[:]
    description.output.extend(features[:at] + new + features[at + 1:])


def _resize(array, axis, size):
    """A multiArrayType's size along `axis` set to `size`, in its fixed shape and its flexible ranges alike."""
    if len(array.shape) > axis:
        array.shape[axis] = size
    flexible = array.WhichOneof("ShapeFlexibility")
    if flexible == "enumeratedShapes":
        for shape in array.enumeratedShapes.shapes:
            if len(shape.shape) > axis:
                shape.shape[axis] = size
    elif flexible == "shapeRange" and len(array.shapeRange.sizeRanges) > axis:
        array.shapeRange.sizeRanges[axis].lowerBound = size
        array.shapeRange.sizeRanges[axis].upperBound = size
