"""What the REGION/EXACT proof feeds (numerics/proofs.py), shown with a toy rule no module of mlopt knows:
`softmax(select(cond, x, -inf))` -> the same with a finite fill. The chain reads the condition: a bool, or an
int32 cast to bool. The proof used to refuse any value that was not a float ("the chain reads 'cond', bool,
which the proof cannot feed"), which left transformers' padding + causal mask alone (fixtures/hf_input_masks). It
now feeds bools - and integers the rule marks `binary` - as keep/drop masks: 0s and 1s, every row (last axis)
holding both, so that no softmax row is masked entirely (where -inf and a finite fill differ by design)."""

import numpy as np
import pytest

import coremltools as ct
from coremltools.converters.mil import Builder as mb

from conftest import chains, op_types, run_package
from mlopt import optimize_package
from mlopt.graph.dtypes import BOOL
from mlopt.patterns.status import NOT_THIS_PATTERN
from mlopt.patterns.trace import attempt
from mlopt.report import LEFT_ALONE, REWRITTEN
from mlopt.rules.base import REGION, Match, Rule

FILL = -1e4


class SelectFill(Rule):
    """softmax(select(cond, x, c)) with -inf in the constant c -> softmax(select(cond, x, FILL)); the cast that
    makes cond from an integer mask is in the chain, and the integer is marked `binary` when `marks_binary`."""

    name = "select_fill_toy"
    title = "SelectFill"
    description = "softmax(select(cond, x, -inf)) -> the same with a finite fill"
    looks_for = "softmax of a select with a -inf fill"
    anchors = ("softmax",)
    operands = ("cond",)
    proof = REGION
    units = None
    marks_binary = True
    inverted = False  # a wrong lowering: the branches swapped

    def match(self, graph, op):
        select = graph.producer(graph.arg(op, "x") or "")
        if select is None or graph.op_type(select) != "select":
            return NOT_THIS_PATTERN
        cond, x, fill = graph.arg(select, "cond"), graph.arg(select, "a"), graph.arg(select, "b")
        fill_value = graph.const_value(fill) if fill is not None else None
        if fill_value is None or not np.isneginf(fill_value).all():
            return NOT_THIS_PATTERN
        cast = graph.producer(cond)
        source = graph.arg(cast, "x") if cast is not None and graph.op_type(cast) == "cast" else None

        def body(trace):
            if source is not None:
                trace.take(cast)
            trace.take(select)
            trace.take(op)
            binary = (source,) if source is not None and self.marks_binary else ()
            return Match(x=x, axes=(graph.rank(x) - 1,), output=graph.output(op), output_op=op, ops=trace.op_names(),
                         dtype=graph.dtype(x), operands={"cond": source if source is not None else cond}, binary=binary)

        return attempt(graph, body)

    def lower(self, b, m):
        cond = m.operands["cond"]
        if b.dtype(cond) != BOOL:
            cond = b.cast(cond, BOOL)
        fill = b.const(np.float32(FILL), m.dtype)
        chosen = b.select(cond, fill, m.x) if self.inverted else b.select(cond, m.x, fill)
        return b.elementwise("softmax", chosen, axis=m.axes[0])


def _package(tmp_path, integer):
    """x (2, 8) fp32 scores; the keep mask a bool (greater(c, 0)) or an int32 input cast to bool."""
    specs = [mb.TensorSpec(shape=(2, 8)), mb.TensorSpec(shape=(2, 8), dtype=ct.converters.mil.mil.types.int32 if integer else None)]

    @mb.program(input_specs=specs, opset_version=ct.target.iOS17)
    def prog(x, c):
        cond = mb.cast(x=c, dtype="bool", name="cond") if integer else mb.greater(x=c, y=np.float32(0), name="cond")
        return mb.softmax(x=mb.select(cond=cond, a=x, b=np.float32(-np.inf), name="masked"), axis=-1, name="probs")

    path = str(tmp_path / f"select_{'int' if integer else 'bool'}.mlpackage")
    ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17, pass_pipeline=ct.PassPipeline.EMPTY,
               compute_precision=ct.precision.FLOAT32, skip_model_load=True).save(path)
    return path


@pytest.mark.parametrize("integer", [False, True])
def test_the_proof_feeds_a_bool_the_chain_reads_and_the_rewrite_keeps_the_outputs(tmp_path, integer):
    src, out = _package(tmp_path, integer), str(tmp_path / "out.mlpackage")
    (chain,) = chains(optimize_package(src, out, rules=(SelectFill(),)))
    assert chain.status == REWRITTEN, chain.reason
    assert op_types(out) == (["cast", "select", "softmax"] if integer else ["greater", "select", "softmax"])
    # rows that keep something: the same probabilities (-inf and -1e4 both give exactly 0 beside a kept score)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 8)).astype(np.float32)
    keep = np.array([[1, 0, 0, 1, 1, 0, 1, 0], [0, 0, 0, 0, 0, 0, 0, 1]])
    c = keep.astype(np.int32) if integer else (keep - 0.5).astype(np.float32)
    before, after = run_package(src, {"x": x, "c": c}), run_package(out, {"x": x, "c": c})
    np.testing.assert_array_equal(after["probs"], before["probs"])
    assert (after["probs"][keep == 0] == 0).all()


def test_a_wrong_lowering_reading_a_bool_is_caught(tmp_path, monkeypatch):
    monkeypatch.setattr(SelectFill, "inverted", True)
    src, out = _package(tmp_path, False), str(tmp_path / "out.mlpackage")
    (chain,) = chains(optimize_package(src, out, rules=(SelectFill(),)))
    assert chain.status == LEFT_ALONE
    # the first magnitude the rule's proof tries (Rule.magnitudes) already shows it
    assert chain.reason == (
        f"proof failed: the rewrite differs from the SelectFill chain by 1 (relative) at input magnitude "
        f"{SelectFill.magnitudes[0]:g}; rolled back")


def test_an_integer_the_rule_does_not_mark_binary_is_not_fed(tmp_path, monkeypatch):
    """An integer could index, count or hold any value: only the rule knows it is a mask (`Match.binary`)."""
    monkeypatch.setattr(SelectFill, "marks_binary", False)
    src, out = _package(tmp_path, True), str(tmp_path / "out.mlpackage")
    (chain,) = chains(optimize_package(src, out, rules=(SelectFill(),)))
    assert (chain.status, chain.reason) == (
        LEFT_ALONE, "could not be evaluated: the chain reads 'c', int32, which the proof cannot feed; not rewritten")


def test_bools_are_drawn_with_both_values_in_every_row():
    """The proof's draw is the audit's keep/drop draw: no row all False (masked entirely) or all True."""
    from mlopt.numerics.inputs import mask_draw

    rows = mask_draw(np.random.default_rng(0), (64, 3, 5)).astype(bool).reshape(-1, 5)
    assert rows.any(axis=1).all() and (~rows).any(axis=1).all()


def test_the_proof_draws_the_same_inputs_in_every_process(tmp_path):
    """The values the region reads used to be drawn in the order of a protobuf map (an op's inputs), which changes
    from process to process with Python's string hashing: the same model got other inputs, and another error in
    its report, from run to run (here 1 or 1.5). They are drawn in parameter-name order now."""
    import os
    import subprocess
    import sys

    src = _package(tmp_path, False)
    script = (
        "import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
        "from test_region_proof_feeds import SelectFill\nfrom mlopt import optimize_package\n"
        "SelectFill.inverted = True\n"
        "r = optimize_package(sys.argv[3], None, dry_run=True, rules=(SelectFill(),))\n"
        "print([c.reason for f in r.functions for c in f.chains][0])\n")
    here, root = os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    reasons = set()
    for seed in ("1", "2", "3", "4"):
        done = subprocess.run([sys.executable, "-c", script, here, root, src], capture_output=True, text=True,
                              env={**os.environ, "PYTHONHASHSEED": seed}, check=True)
        reasons.add(done.stdout.strip())
    assert reasons == {"proof failed: the rewrite differs from the SelectFill chain by 1 (relative) at input magnitude 0.01; rolled back"}
