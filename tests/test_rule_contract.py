"""The rule contract, proven with rules no module of mlopt knows, declared in this file and handed to mlopt as a
rule set (or added to the registry for the command line). Everything else - the proof, the report and JSON,
`--only/--skip`, provenance, the no-candidate note, the weight writer, the conversion-time passes - must work for
them without a line of rule-specific code (docs/writing-a-rule.md).

- `SquareRule`: mul(x, x) -> square (the row self-check, ROWS).
- `SplitWideLinear` (shape-changing): a linear with more than `width` output channels -> one linear per chunk of
  `width` channels and a concat; the weight and bias split into new stored blobs (REGION proof).
- `FiniteMask` (constant rewrite): softmax(x + mask) with a -inf in the constant mask -> the same with the -inf
  replaced by a finite `fill` (REGION proof: the program's own mask is fed to it).
- `ScaleWeight` (weight rewrite): linear(x, W, b) -> linear(x, W * 2^shift, b * 2^shift) * 2^-shift, the scaled
  weight a new stored blob (EXACT proof: in float64 the rewrite must equal the original bit for bit).

- `ScaleRatio` (several values at once, `Match.sites`): real_div(linear(x, W1), linear(x, W2)) -> both weights times
  4, each linear a site of its own, judged at the division (EXACT proof).

Each has a deliberately wrong lowering its proof catches (the tests show the rewrite rolled back)."""

import json
import os
import struct
import sys

import numpy as np
import pytest

import coremltools as ct
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.frontend.milproto.load import load as milproto_load
from coremltools.converters.mil.mil import types

import mlopt.rules
from conftest import chains, inputs_for, mb_builder_ops, op_types, run_package, tree_digest
from json_schema import SCHEMA, errors
from mlopt import optimize_package
from mlopt.cli import main
from mlopt.coreml import convert
from mlopt.package import read_package
from mlopt.patterns.status import NOT_THIS_PATTERN
from mlopt.patterns.trace import attempt
from mlopt.patterns.walk import same_tensor
from mlopt.rules.base import EXACT, INT, REGION, LoweringFailed, Match, Rule, Site


# -- the rules --------------------------------------------------------------------------------------------------------

class SquareRule(Rule):
    name = "square"
    title = "Square"
    anchors = ("mul",)
    units = None

    def match(self, graph, op):
        x, y = graph.arg(op, "x"), graph.arg(op, "y")
        if x is None or (x != y and not same_tensor(graph, x, y or "")):
            return NOT_THIS_PATTERN

        def body(trace):
            trace.take(op)
            if not graph.is_float_tensor(x):
                trace.fail("squares a tensor that is not a float tensor")
            return Match(x=x, axes=(), output=graph.output(op), output_op=op, ops=trace.op_names(), dtype=graph.dtype(x))

        return attempt(graph, body)

    def lower(self, b, m):
        return b.elementwise("square", m.x)

    def reference(self, x, operands, axes, params):
        return np.asarray(x, np.float64) ** 2


def stored_const(graph, value):
    """Whether a `const` op defines `value` (its size does not matter: a weight may be stored)."""
    op = graph.producer(value) if value is not None else None
    return op is not None and graph.op_type(op) == "const"


class LinearRule(Rule):
    """What the two linear rules share: a linear with a constant weight (and maybe bias) over x's last axis."""

    anchors = ("linear",)
    operands = ("weight", "bias")
    units = None

    def condition(self, graph, weight):
        return None  # why not, or None

    def match(self, graph, op):
        x, weight, bias = graph.arg(op, "x"), graph.arg(op, "weight"), graph.arg(op, "bias")
        if x is None or not stored_const(graph, weight):
            return NOT_THIS_PATTERN

        def body(trace):
            trace.take(op)
            if bias is not None and not stored_const(graph, bias):
                trace.fail("its bias is not a constant")
            why = self.condition(graph, weight)
            if why:
                trace.recognise(self.title, why)
            return Match(x=x, axes=(graph.rank(x) - 1,), output=graph.output(op), output_op=op, ops=trace.op_names(),
                         dtype=graph.dtype(x), operands={"weight": weight, "bias": bias}, params=dict(self.defaults))

        return attempt(graph, body)

    def output_shape(self, x_shape, operand_shapes, axes, params):
        return (*x_shape[:-1], operand_shapes["weight"][0])


class SplitWideLinear(LinearRule):
    name = "split_wide_toy"
    title = "WideLinear"
    description = "a linear wider than `chunk` output channels -> one linear per chunk, concatenated"
    looks_for = "linear wider than its chunk"
    params = ("chunk",)
    param_types = {"chunk": INT}
    proof = REGION
    defaults = {"chunk": 16}

    def condition(self, graph, weight):
        out = graph.dim(weight, 0)
        return None if out is not None and out > self.defaults["chunk"] else f"{out} output channels: not wider than a chunk"

    def lower(self, b, m):
        weight, bias, chunk = m.operands["weight"], m.operands.get("bias"), int(m.params["chunk"])
        out, parts = b.dim(weight, 0), []
        for begin in range(0, out, chunk):
            end = min(out, begin + chunk)
            part_bias = b.constant_slice(bias, 0, begin, end) if bias is not None else None
            parts.append(b.linear(m.x, b.constant_slice(weight, 0, begin, end), part_bias))
        return b.concat(parts, b.rank(m.x) - 1)


class FiniteMask(Rule):
    name = "finite_mask_toy"
    title = "MaskedSoftmax"
    description = "softmax(x + mask) with -inf in the constant mask -> the -inf replaced by a finite fill"
    looks_for = "softmax of a -inf-masked sum"
    anchors = ("softmax",)
    operands = ("mask",)
    params = ("fill",)
    proof = REGION
    units = None
    window = 7  # elements of the mask read at a time (a bounded window, whatever its size)

    def match(self, graph, op):
        total = graph.arg(op, "x")
        add = graph.producer(total) if total is not None else None
        if add is None or graph.op_type(add) != "add":
            return NOT_THIS_PATTERN
        a, c = graph.arg(add, "x"), graph.arg(add, "y")
        x, mask = (a, c) if stored_const(graph, c) else (c, a)
        if x is None or not stored_const(graph, mask):
            return NOT_THIS_PATTERN

        def body(trace):
            trace.take(add)
            trace.take(op)
            chunks = graph.const_chunks(mask, self.window)
            if chunks is None:
                trace.fail("its mask cannot be read")
            if not any(np.isneginf(chunk).any() for chunk in chunks):
                trace.recognise(self.title, "its mask holds no -inf")
            axis = int(graph.const(op, "axis") if graph.const(op, "axis") is not None else -1) % graph.rank(x)
            return Match(x=x, axes=(axis,), output=graph.output(op), output_op=op, ops=trace.op_names(),
                         dtype=graph.dtype(x), operands={"mask": mask}, params={"fill": -1e4})

        return attempt(graph, body)

    def lower(self, b, m):
        mask = b.constant_value(m.operands["mask"])
        if mask is None:
            raise LoweringFailed("its mask is too large to rewrite here")
        finite = b.const(np.where(np.isneginf(mask), m.params["fill"], mask), b.dtype(m.operands["mask"]))
        return b.elementwise("softmax", b.add(m.x, finite), axis=m.axes[0])


class ScaleWeight(LinearRule):
    name = "scale_weight_toy"
    title = "ScaledLinear"
    description = "linear(x, W, b) -> linear(x, W * 2^shift, b * 2^shift) * 2^-shift"
    looks_for = "linear"
    params = ("shift",)
    param_types = {"shift": INT}
    proof = EXACT
    defaults = {"shift": 3}

    def lower(self, b, m):
        factor = 2.0 ** int(m.params["shift"])
        bias = m.operands.get("bias")
        scaled = b.linear(m.x, b.scaled_constant(m.operands["weight"], factor),
                          b.scaled_constant(bias, factor) if bias is not None else None)
        return b.mul(scaled, b.const(1.0 / factor, m.dtype))


TOYS = {"split": SplitWideLinear, "mask": FiniteMask, "scale": ScaleWeight}


# -- deliberately wrong lowerings --------------------------------------------------------------------------------------

def chunks_reversed(self, b, m):
    """Every chunk right, concatenated in the wrong order: shapes and types stay valid."""
    weight, bias, chunk = m.operands["weight"], m.operands.get("bias"), int(m.params["chunk"])
    out, parts = b.dim(weight, 0), []
    for begin in range(0, out, chunk):
        end = min(out, begin + chunk)
        parts.insert(0, b.linear(m.x, b.constant_slice(weight, 0, begin, end), b.constant_slice(bias, 0, begin, end)))
    return b.concat(parts, b.rank(m.x) - 1)


def mask_dropped(self, b, m):
    """-inf replaced by 0 instead of a large negative: invisible to a proof fed random masks, not to this one."""
    mask = b.constant_value(m.operands["mask"])
    finite = b.const(np.where(np.isneginf(mask), 0.0, mask), b.dtype(m.operands["mask"]))
    return b.elementwise("softmax", b.add(m.x, finite), axis=m.axes[0])


def scaled_by_three(self, b, m):
    """Scaled by 3 and back: within fp32 tolerance everywhere, but the stored weight is rounded."""
    bias = m.operands.get("bias")
    scaled = b.linear(m.x, b.scaled_constant(m.operands["weight"], 3.0), b.scaled_constant(bias, 3.0))
    return b.mul(scaled, b.const(1.0 / 3.0, m.dtype))


PARAMS = {"split": {"chunk": 16}, "mask": {"fill": -1e4}, "scale": {"shift": 3}}  # what each match carries
WRONG = {"split": chunks_reversed, "mask": mask_dropped, "scale": scaled_by_three}


# -- programs ---------------------------------------------------------------------------------------------------------

IN, OUT, SEQ = 8, 40, 5
RNG = np.random.default_rng(7)
WEIGHT = RNG.standard_normal((OUT, IN)).astype(np.float32)
BIAS = RNG.standard_normal(OUT).astype(np.float32)
MASK = np.triu(np.full((SEQ, SEQ), -np.inf, np.float32), 1)  # causal: every row keeps its first element


def linear_prog():
    @mb.program(input_specs=[mb.TensorSpec(shape=(1, SEQ, IN))], opset_version=ct.target.iOS17)
    def prog(x):
        return mb.relu(x=mb.linear(x=x, weight=WEIGHT, bias=BIAS))

    return prog


def mask_prog():
    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 2, SEQ, SEQ))], opset_version=ct.target.iOS17)
    def prog(x):
        return mb.softmax(x=mb.add(x=x, y=MASK), axis=-1)

    return prog


PROGRAMS = {"split": linear_prog, "mask": mask_prog, "scale": linear_prog}
EXPECTED = {  # ops after the rewrite (constants left out)
    "split": ["linear", "linear", "linear", "concat", "relu"],
    "mask": ["add", "softmax"],
    "scale": ["linear", "mul", "relu"],
}


def save(tmp_path, kind, precision=ct.precision.FLOAT32, name="in"):
    path = str(tmp_path / f"{name}.mlpackage")
    ct.convert(PROGRAMS[kind](), convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
               compute_precision=precision, skip_model_load=True).save(path)
    return path


def weight_file(path):
    return os.path.join(path, "Data", "com.apple.CoreML", "weights", "weight.bin")


def loads_in_coremltools(path):
    """coremltools' own program loader: re-runs type inference on every op and reads every blob."""
    model = ct.models.MLModel(path, skip_model_load=True)
    spec = model.get_spec()
    program = milproto_load(spec, spec.specificationVersion, model.weights_dir)
    return [op.op_type for op in program.functions["main"].operations if op.op_type != "const"]


@pytest.fixture
def registered(monkeypatch):
    """register(rule): the rule added to the registry, for the command line."""
    def register(rule):
        monkeypatch.setattr(mlopt.rules, "RULES", (*mlopt.rules.RULES, rule))
    return register


# -- the square rule: the row self-check --------------------------------------------------------------------------------

def square_package(tmp_path, dtype=types.fp32):
    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 8), dtype=dtype)], opset_version=ct.target.iOS17)
    def prog(x):
        return mb.mul(x=x, y=x)

    path = str(tmp_path / "in.mlpackage")
    ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17, pass_pipeline=ct.PassPipeline.EMPTY,
               compute_precision=ct.precision.FLOAT32, skip_model_load=True).save(path)
    return path


def test_a_new_rule_runs_through_the_whole_pipeline(registered, tmp_path):
    registered(SquareRule())
    src, out = square_package(tmp_path), str(tmp_path / "o.mlpackage")
    report = optimize_package(src, out, compute_units="CPU_ONLY")
    (chain,) = chains(report)
    assert (chain.rule, chain.kind, chain.status, chain.form) == ("square", "Square", "rewritten", "mul")
    assert chain.error < 1e-6  # the self-check ran against the rule's reference
    assert op_types(out) == ["square"]
    assert read_package(out).spec.description.metadata.userDefined["com.github.mlopt.square_rewrites"] == "1"
    skipped = optimize_package(src, dry_run=True, skip=["square"])
    assert [c.reason for c in chains(skipped)] == ["skipped (--skip)"]


def test_its_near_miss_and_json(registered, tmp_path, capsys):
    registered(SquareRule())
    src = square_package(tmp_path, dtype=types.int32)
    capsys.readouterr()
    assert main(["inspect", src, "--json"]) == 0
    (chain,) = [c for f in json.loads(capsys.readouterr().out)["functions"] for c in f["chains"]]
    assert (chain["rule"], chain["status"], chain["reason"]) == ("square", "left alone", "squares a tensor that is not a float tensor")


def test_without_candidates_the_note_names_what_each_rule_looks_for(registered, tmp_path):
    registered(SquareRule())

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 8))], opset_version=ct.target.iOS17)
    def prog(x):
        return mb.relu(x=x)

    path = str(tmp_path / "relu.mlpackage")
    ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17, skip_model_load=True).save(path)
    (function,) = optimize_package(path, dry_run=True).functions
    assert function.note.endswith(" or Square chain")
    (alone,) = optimize_package(path, dry_run=True, rules=(SquareRule(),)).functions
    assert alone.note == "no Square chain"  # a rule set of one: the norms' look-alikes are theirs, not named


def test_the_mb_builder_emits_elementwise_ops():
    assert mb_builder_ops(lambda b, x: b.elementwise("clip", x, alpha=-1.0, beta=1.0)) == ["clip"]


# -- the three kinds, on saved packages -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", sorted(TOYS))
def test_saved_package_end_to_end(kind, tmp_path):
    rule = TOYS[kind]()
    src, out = save(tmp_path, kind), str(tmp_path / "out.mlpackage")
    report = optimize_package(src, out, rules=(rule,))
    (chain,) = chains(report)
    assert (chain.rule, chain.kind, chain.status) == (rule.name, rule.title, "rewritten"), chain.reason
    assert chain.error < 1e-4  # the proof measured the rewrite against the original chain
    assert op_types(out) == EXPECTED[kind]
    assert loads_in_coremltools(out) == EXPECTED[kind]
    assert read_package(out).spec.description.metadata.userDefined[f"com.github.mlopt.{rule.name}_rewrites"] == "1"
    feeds = inputs_for(src)
    before, after = run_package(src, feeds), run_package(out, feeds)
    for name in before:
        np.testing.assert_allclose(after[name], before[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", sorted(TOYS))
def test_the_same_input_gives_the_same_bytes(kind, tmp_path):
    src = save(tmp_path, kind)
    digests = set()
    for k in range(2):
        out = str(tmp_path / f"out{k}.mlpackage")
        optimize_package(src, out, rules=(TOYS[kind](),))
        digests.add(tree_digest(out))
    assert len(digests) == 1


def blob_records(path):
    """(count in the header, [(sentinel, dtype code, size, data offset)] of every blob) of a weight file."""
    with open(weight_file(path), "rb") as f:
        data = f.read()
    count, version = struct.unpack_from("<II", data)
    assert version == 2
    records, at = [], 64
    while at + 64 <= len(data):
        record = struct.unpack_from("<IIQQ", data, at)
        assert record[0] == 0xDEADBEEF and record[3] == at + 64 and record[3] % 64 == 0
        records.append(record)
        at = (record[3] + record[2] + 63) // 64 * 64
    return count, records


def test_the_split_weight_is_written_as_new_blobs_and_the_old_one_dropped(tmp_path):
    src, out = save(tmp_path, "split"), str(tmp_path / "out.mlpackage")
    optimize_package(src, out, rules=(SplitWideLinear(),))
    count, records = blob_records(out)
    before_count, before = blob_records(src)
    # weight (40x8 fp32) and bias (40) were two blobs; now three weight chunks and three bias chunks, the old ones gone
    assert (before_count, len(before)) == (2, 2)
    assert (count, len(records)) == (6, 6)
    assert sorted(r[2] for r in records) == sorted([16 * 8 * 4, 16 * 8 * 4, 8 * 8 * 4, 16 * 4, 16 * 4, 8 * 4])
    # every chunk holds the bytes of the original rows: the split copies byte ranges
    view = read_package(out)
    from mlopt.package.weights import BlobReader
    blobs = BlobReader(os.path.dirname(view.model_path))
    try:
        consts = [op for op in view.spec.mlProgram.functions["main"].block_specializations["CoreML7"].operations
                  if op.type == "const" and op.attributes["val"].WhichOneof("value") == "blobFileValue"]
        weights = [blobs.read(c.attributes["val"].blobFileValue.fileName, c.attributes["val"].blobFileValue.offset,
                              np.float32, [d.constant.size for d in c.outputs[0].type.tensorType.dimensions])
                   for c in consts]
        np.testing.assert_array_equal(np.concatenate([w for w in weights if w.ndim == 2]), WEIGHT)
        np.testing.assert_array_equal(np.concatenate([w for w in weights if w.ndim == 1]), BIAS)
    finally:
        blobs.close()


def test_the_scaled_weight_is_the_stored_one_times_the_factor(tmp_path):
    src, out = save(tmp_path, "scale"), str(tmp_path / "out.mlpackage")
    optimize_package(src, out, rules=(ScaleWeight(),))
    count, records = blob_records(out)
    assert (count, len(records)) == (2, 2)  # the scaled weight and bias replace the originals
    with open(weight_file(out), "rb") as f:
        data = f.read()
    stored = [np.frombuffer(data[r[3] : r[3] + r[2]], np.float32) for r in records]
    np.testing.assert_array_equal(sorted(stored, key=len)[1].reshape(OUT, IN), WEIGHT * 8)
    np.testing.assert_array_equal(sorted(stored, key=len)[0], BIAS * 8)


def test_a_constant_rewrite_leaves_the_weight_file_alone(tmp_path):
    src, out = save(tmp_path, "mask"), str(tmp_path / "out.mlpackage")
    optimize_package(src, out, rules=(FiniteMask(),))
    with open(weight_file(src), "rb") as a, open(weight_file(out), "rb") as b:
        assert a.read() == b.read()  # the new mask is an immediate constant; nothing is added to weight.bin


@pytest.mark.parametrize("kind", sorted(TOYS))
def test_json_selection_and_provenance_through_the_command_line(kind, registered, tmp_path, capsys):
    rule = TOYS[kind]()
    registered(rule)
    src, out = save(tmp_path, kind), str(tmp_path / "out.mlpackage")
    capsys.readouterr()
    assert main(["optimize", src, out, "--only", rule.name, "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert errors(payload, SCHEMA) == []  # the rule's own fields fit mlopt/report.schema.json
    (chain,) = [c for f in payload["functions"] for c in f["chains"] if c["rule"] == rule.name]
    assert (chain["kind"], chain["status"]) == (rule.title, "rewritten")
    assert {k: chain[k] for k in rule.params} == PARAMS[kind]  # the rule's literal parameters, as typed
    assert main(["optimize", src, str(tmp_path / "skipped.mlpackage"), "--skip", rule.name, "--json"]) == 0
    (skipped,) = [c for f in json.loads(capsys.readouterr().out)["functions"] for c in f["chains"] if c["rule"] == rule.name]
    assert (skipped["status"], skipped["reason"]) == ("left alone", "skipped (--skip)")
    assert f"com.github.mlopt.{rule.name}_rewrites" not in read_package(str(tmp_path / "skipped.mlpackage")).spec.description.metadata.userDefined


@pytest.mark.parametrize("kind", sorted(TOYS))
def test_the_proof_catches_a_wrong_lowering(kind, monkeypatch, tmp_path):
    rule_class = TOYS[kind]
    monkeypatch.setattr(rule_class, "lower", WRONG[kind])
    src, out = save(tmp_path, kind), str(tmp_path / "out.mlpackage")
    (chain,) = chains(optimize_package(src, out, rules=(rule_class(),)))
    assert chain.status == "left alone"
    expected = "exact proof failed: in float64 the rewrite differs from the original" if kind == "scale" else \
        f"proof failed: the rewrite differs from the {rule_class.title} chain"
    assert chain.reason.startswith(expected) and chain.reason.endswith("; rolled back"), chain.reason
    assert op_types(out) == op_types(src)
    with open(weight_file(src), "rb") as a, open(weight_file(out), "rb") as b:
        assert a.read() == b.read()  # the rolled-back rewrite's new blobs are not written


def test_without_the_proof_the_wrong_lowerings_land_and_are_wrong(monkeypatch, tmp_path):
    """What the proofs above stopped: the wrong split and the dropped mask change the outputs."""
    for kind in ("split", "mask"):
        monkeypatch.setattr(TOYS[kind], "lower", WRONG[kind])
        src, out = save(tmp_path, kind, name=kind), str(tmp_path / f"{kind}.out.mlpackage")
        (chain,) = chains(optimize_package(src, out, verify=False, rules=(TOYS[kind](),)))
        assert chain.status == "rewritten"
        feeds = inputs_for(src)
        before, after = run_package(src, feeds), run_package(out, feeds)
        assert any(not np.allclose(after[n], before[n], rtol=1e-3, atol=1e-3) for n in before)


def test_scaling_by_three_passes_a_tolerance_but_not_the_exact_proof(monkeypatch, tmp_path):
    monkeypatch.setattr(ScaleWeight, "lower", scaled_by_three)
    monkeypatch.setattr(ScaleWeight, "proof", REGION)
    src = save(tmp_path, "scale")
    (chain,) = chains(optimize_package(src, dry_run=True, rules=(ScaleWeight(),)))
    assert chain.status == "would rewrite"  # fp32 tolerance cannot see the rounding the exact proof refuses


def test_a_narrow_linear_is_recognised_and_left_alone(monkeypatch, tmp_path):
    monkeypatch.setattr(SplitWideLinear, "defaults", {"chunk": 64})
    (chain,) = chains(optimize_package(save(tmp_path, "split"), dry_run=True, rules=(SplitWideLinear(),)))
    assert (chain.status, chain.reason) == ("left alone", "WideLinear: 40 output channels: not wider than a chunk")


def test_a_mask_without_minus_inf_is_left_alone(monkeypatch, tmp_path):
    monkeypatch.setattr(FiniteMask, "window", 3)  # the mask streamed 3 elements at a time
    monkeypatch.setattr(sys.modules[__name__], "MASK", np.triu(np.full((SEQ, SEQ), -1e9, np.float32), 1))
    (chain,) = chains(optimize_package(save(tmp_path, "mask"), dry_run=True, rules=(FiniteMask(),)))
    assert (chain.status, chain.reason) == ("left alone", "MaskedSoftmax: its mask holds no -inf")


# -- failures leave the chain alone ---------------------------------------------------------------------------------------

def test_a_lowering_that_raises_leaves_the_chain_alone_with_its_reason(monkeypatch, tmp_path):
    def refuses(self, b, m):
        raise LoweringFailed("this weight is palettized")

    monkeypatch.setattr(SplitWideLinear, "lower", refuses)
    src = save(tmp_path, "split")
    (chain,) = chains(optimize_package(src, dry_run=True, rules=(SplitWideLinear(),)))
    assert (chain.status, chain.reason) == ("left alone", "its replacement could not be built: this weight is palettized; not rewritten")


def test_a_builder_that_cannot_cut_a_weight_says_why(monkeypatch, tmp_path):
    """mlopt.optimize on an in-memory model writes no weight file: a split of a stored weight is left alone."""
    src = save(tmp_path, "split")
    model = ct.models.MLModel(src, skip_model_load=True)
    _, report = mlopt_optimize(model, report=True, rules=(SplitWideLinear(),))
    (chain,) = chains(report)
    assert chain.status == "left alone"
    assert chain.reason.startswith("its replacement could not be built: '") and "this run writes no weight file" in chain.reason


def mlopt_optimize(*args, **kwargs):
    from mlopt import optimize

    return optimize(*args, **kwargs)


class ZeroOfSub(Rule):
    """sub(x, x) -> a constant of zeros: `lower` returns a constant."""

    name = "zero_toy"
    title = "SelfDifference"
    anchors = ("sub",)
    units = None
    proof = REGION

    def match(self, graph, op):
        x, y = graph.arg(op, "x"), graph.arg(op, "y")
        if x is None or x != y or None in [graph.dim(x, i) for i in range(graph.rank(x))]:
            return NOT_THIS_PATTERN
        return attempt(graph, lambda trace: (trace.take(op), Match(
            x=x, axes=(), output=graph.output(op), output_op=op, ops=trace.op_names(), dtype=graph.dtype(x)))[1])

    def lower(self, b, m):
        return b.const(np.zeros([b.dim(m.x, i) for i in range(b.rank(m.x))]), m.dtype)


def test_lower_may_return_a_constant(tmp_path):
    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 3))], opset_version=ct.target.iOS17)
    def prog(x):
        return mb.relu(x=mb.sub(x=x, y=x))

    src, out = str(tmp_path / "in.mlpackage"), str(tmp_path / "out.mlpackage")
    ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17, pass_pipeline=ct.PassPipeline.EMPTY,
               compute_precision=ct.precision.FLOAT32, skip_model_load=True).save(src)
    (chain,) = chains(optimize_package(src, out, rules=(ZeroOfSub(),)))
    assert chain.status == "rewritten", chain.reason
    assert op_types(out) == ["relu"]
    assert loads_in_coremltools(out) == ["relu"]


# -- the three kinds, at conversion time ----------------------------------------------------------------------------------

@pytest.mark.parametrize("precision", [ct.precision.FLOAT32, ct.precision.FLOAT16])
@pytest.mark.parametrize("kind", sorted(TOYS))
def test_conversion_time(kind, precision, tmp_path):
    rule = TOYS[kind]()
    model = convert(PROGRAMS[kind](), convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
                    compute_precision=precision, compute_units=ct.ComputeUnit.CPU_ONLY, skip_model_load=True, rules=(rule,))
    path = str(tmp_path / "converted.mlpackage")
    model.save(path)
    ops = [t for t in loads_in_coremltools(path) if t != "cast"]
    assert ops == EXPECTED[kind]
    plain = str(tmp_path / "plain.mlpackage")
    ct.convert(PROGRAMS[kind](), convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
               compute_precision=precision, skip_model_load=True).save(plain)
    feeds = inputs_for(plain)
    before, after = run_package(plain, feeds), run_package(path, feeds)
    tol = 1e-5 if precision == ct.precision.FLOAT32 else 2e-2
    for name in before:
        np.testing.assert_allclose(after[name].astype(np.float64), before[name].astype(np.float64), rtol=tol, atol=tol)


def test_conversion_time_params_keep_their_declared_types():
    """chunk and shift are int32 inputs of the fused op (INT), not floats through the epsilon rule."""
    from mlopt.coreml import pass_pipeline
    from mlopt.coreml.ops import fused_op_type
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY

    rule = SplitWideLinear()
    pass_pipeline(rules=(rule,))  # registers the rule's op and passes
    prog = linear_prog()
    fuse = PASS_REGISTRY[f"mlopt::fuse_{rule.name}"]
    fuse.compute_units = "CPU_ONLY"
    fuse(prog)
    (fused,) = [op for op in prog.functions["main"].operations if op.op_type == fused_op_type(rule)]
    assert fused.chunk.dtype == types.int32 and int(fused.chunk.val) == 16
    assert fused.outputs[0].shape == (1, SEQ, OUT)  # the rule's output shape, not x broadcast with the weight


def test_a_linear_wider_than_16384_with_a_weight_beyond_the_row_budget(monkeypatch, tmp_path):
    """The case that broke the old contract: 16385 output channels (a weight of 1,048,640 elements, above the row
    self-check's 2**20) is proved and split on a saved package, and typed right at conversion time."""
    monkeypatch.setattr(SplitWideLinear, "defaults", {"chunk": 16384})
    wide = np.random.default_rng(3).standard_normal((16385, 64)).astype(np.float32)

    def prog():
        @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4, 64))], opset_version=ct.target.iOS17)
        def p(x):
            return mb.linear(x=x, weight=wide)

        return p

    src, out = str(tmp_path / "in.mlpackage"), str(tmp_path / "out.mlpackage")
    ct.convert(prog(), convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
               compute_precision=ct.precision.FLOAT32, skip_model_load=True).save(src)
    (chain,) = chains(optimize_package(src, out, rules=(SplitWideLinear(),)))
    assert chain.status == "rewritten", chain.reason
    assert loads_in_coremltools(out) == ["linear", "linear", "concat"]
    model = convert(prog(), convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
                    compute_precision=ct.precision.FLOAT32, compute_units=ct.ComputeUnit.CPU_ONLY, skip_model_load=True,
                    rules=(SplitWideLinear(),))
    converted = str(tmp_path / "converted.mlpackage")
    model.save(converted)
    assert loads_in_coremltools(converted) == ["linear", "linear", "concat"]


def test_at_conversion_time_a_replacement_that_cannot_be_built_leaves_the_chain_alone(monkeypatch):
    def refuses(self, b, m):
        b.linear(m.x, m.operands["weight"])  # ops emitted before the failure are removed again
        raise LoweringFailed("this weight is palettized")

    monkeypatch.setattr(SplitWideLinear, "lower", refuses)
    with pytest.warns(UserWarning, match=r"mlopt::fuse_split_wide_toy: the chain at '.*' is left alone: its replacement "
                                         r"could not be built: this weight is palettized"):
        model = convert(linear_prog(), convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
                        compute_units=ct.ComputeUnit.CPU_ONLY, skip_model_load=True, rules=(SplitWideLinear(),))
    ops = [op.type for op in model.get_spec().mlProgram.functions["main"].block_specializations["CoreML7"].operations]
    assert [t for t in ops if t not in ("const", "cast")] == ["linear", "relu"]


# -- a rule that replaces several values at once (Match.sites) ----------------------------------------------------------

class ScaleRatio(Rule):
    """real_div(linear(x, W1), linear(x, W2)) -> the same with W1 and W2 both times 2^shift: a ratio is invariant
    under a common scale, so the two linears (two sites) change and the division, judged, does not."""

    name = "scale_ratio_toy"
    title = "ScaledRatio"
    description = "real_div of two linears -> both linears' weights times a power of two"
    looks_for = "real_div of two linears"
    anchors = ("real_div",)
    proof = EXACT
    magnitudes = (1.0,)
    units = None

    def match(self, graph, op):
        parts = [graph.producer(graph.arg(op, p)) for p in ("x", "y")]
        if any(p is None or graph.op_type(p) != "linear" or not stored_const(graph, graph.arg(p, "weight")) for p in parts):
            return NOT_THIS_PATTERN

        def body(trace):
            trace.take(*parts, op)
            sites = tuple(Site(p, {"weight": graph.arg(p, "weight")}) for p in parts)
            return Match(x=graph.arg(parts[0], "x"), axes=(), output=graph.output(parts[0]), output_op=parts[0],
                         ops=trace.op_names(), dtype=graph.dtype(graph.output(op)), judged_at=(graph.output(op),),
                         sites=sites)

        return attempt(graph, body)

    def lower(self, b, fused):
        out = fused.site.op.outputs[0].name
        return b.same_op(out, weight=b.scaled_constant(fused.site.data["weight"], 4.0))


SCALE_RATIO_LOWER = ScaleRatio.lower


def only_one_site_scaled(self, b, fused):
    """The second linear rebuilt unscaled: the ratio changes by 4."""
    if fused.site.op.outputs[0].name == "lin1":
        return b.same_op("lin1")
    return SCALE_RATIO_LOWER(self, b, fused)


W1 = RNG.standard_normal((OUT, IN)).astype(np.float32)
W2 = RNG.standard_normal((OUT, IN)).astype(np.float32) + 3


def ratio_package(tmp_path):
    w1, w2 = W1, W2

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, SEQ, IN))], opset_version=ct.target.iOS17)
    def prog(x):
        return mb.real_div(x=mb.linear(x=x, weight=w1, name="lin0"), y=mb.linear(x=x, weight=w2, name="lin1"))

    path = str(tmp_path / "ratio.mlpackage")
    ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17, pass_pipeline=ct.PassPipeline.EMPTY,
               compute_precision=ct.precision.FLOAT32, skip_model_load=True).save(path)
    return path


def test_a_match_with_several_sites_rewrites_each_and_is_judged_downstream(tmp_path):
    src, out = ratio_package(tmp_path), str(tmp_path / "o.mlpackage")
    report = optimize_package(src, out, rules=(ScaleRatio(),))
    (chain,) = chains(report)
    assert chain.status == "rewritten", chain.reason
    assert op_types(out) == ["linear", "linear", "real_div"] and loads_in_coremltools(out) == ["linear", "linear", "real_div"]
    count, records = blob_records(out)
    assert (count, len(records)) == (4, 4)  # each site's weight, scaled, replaces its original; the biases stay
    with open(weight_file(out), "rb") as f:
        data = f.read()
    stored = [data[r[3] : r[3] + r[2]] for r in records]
    assert (W1 * 4).tobytes() in stored and (W2 * 4).tobytes() in stored
    assert W1.tobytes() not in stored and W2.tobytes() not in stored
    feeds = inputs_for(src)
    original = run_package(src, feeds, float_dtype=np.float64)
    rewritten = run_package(out, feeds, float_dtype=np.float64)
    for key in original:
        np.testing.assert_allclose(rewritten[key], original[key], rtol=1e-12, atol=0)


def test_a_multi_site_lowering_that_misses_a_site_is_caught(monkeypatch, tmp_path):
    monkeypatch.setattr(ScaleRatio, "lower", only_one_site_scaled)
    src, out = ratio_package(tmp_path), str(tmp_path / "o.mlpackage")
    (chain,) = chains(optimize_package(src, out, rules=(ScaleRatio(),)))
    assert chain.status == "left alone" and chain.reason.endswith("rolled back")
    assert tree_digest(out) == tree_digest(src)
