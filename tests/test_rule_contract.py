"""The rule contract, proven with a rule no module of mlopt knows: `mul(x, x)` -> `square`, declared in this
file and added to the registry for one test. Everything else - the self-check, the report and JSON,
`--skip`, provenance, the no-candidate note - must work for it without a line of rule-specific code, as docs/writing-a-rule.md's
"Writing a rule" promises."""

import json

import numpy as np
import pytest

import coremltools as ct
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import types

import mlopt.rules
from conftest import op_types
from mlopt import optimize_package
from mlopt.cli import main
from mlopt.package import read_package
from mlopt.patterns.status import NOT_THIS_PATTERN
from mlopt.patterns.trace import attempt
from mlopt.patterns.walk import same_tensor
from mlopt.rules.base import Match, Rule


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


@pytest.fixture
def square_registered(monkeypatch):
    monkeypatch.setattr(mlopt.rules, "RULES", (*mlopt.rules.RULES, SquareRule()))


def package(tmp_path, dtype=types.fp32):
    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 8), dtype=dtype)], opset_version=ct.target.iOS17)
    def prog(x):
        return mb.mul(x=x, y=x)

    path = str(tmp_path / "in.mlpackage")
    ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17, pass_pipeline=ct.PassPipeline.EMPTY,
               compute_precision=ct.precision.FLOAT32, skip_model_load=True).save(path)
    return path


def test_a_new_rule_runs_through_the_whole_pipeline(square_registered, tmp_path):
    src, out = package(tmp_path), str(tmp_path / "o.mlpackage")
    report = optimize_package(src, out, compute_units="CPU_ONLY")
    (chain,) = [c for f in report.functions for c in f.chains]
    assert (chain.rule, chain.kind, chain.status, chain.form) == ("square", "Square", "rewritten", "mul")
    assert chain.error < 1e-6  # the self-check ran against the rule's reference
    assert op_types(out) == ["square"]
    assert read_package(out).spec.description.metadata.userDefined["com.github.mlopt.square_rewrites"] == "1"
    skipped = optimize_package(src, dry_run=True, skip=["square"])
    assert [c.reason for f in skipped.functions for c in f.chains] == ["skipped (--skip)"]


def test_its_near_miss_and_json(square_registered, tmp_path, capsys):
    src = package(tmp_path, dtype=types.int32)
    capsys.readouterr()
    assert main(["inspect", src, "--json"]) == 0
    (chain,) = [c for f in json.loads(capsys.readouterr().out)["functions"] for c in f["chains"]]
    assert (chain["rule"], chain["status"], chain["reason"]) == ("square", "left alone", "squares a tensor that is not a float tensor")


def test_without_candidates_the_note_names_what_each_rule_looks_for(square_registered, tmp_path):
    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 8))], opset_version=ct.target.iOS17)
    def prog(x):
        return mb.relu(x=x)

    path = str(tmp_path / "relu.mlpackage")
    ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17, skip_model_load=True).save(path)
    (function,) = optimize_package(path, dry_run=True).functions
    assert function.note.endswith(" or Square chain")


def test_the_mb_builder_emits_elementwise_ops():
    from mlopt.coreml.mb_builder import MbBuilder

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 8))], opset_version=ct.target.iOS17)
    def prog(x):
        return mb.relu(x=x)

    block = prog.functions["main"]
    (relu,) = [op for op in block.operations if op.op_type == "relu"]
    with block:
        builder = MbBuilder(relu, "CoreML7")
        out = builder.elementwise("clip", relu.x, alpha=-1.0, beta=1.0)
        builder.finish(out, relu.outputs[0])
        block.remove_ops([relu])
    assert [op.op_type for op in block.operations if op.op_type != "const"] == ["clip"]
