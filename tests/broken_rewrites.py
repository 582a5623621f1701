"""Deliberately wrong rewrites, made by editing an optimized package's program as a bug in a rule's lowering would
leave it: what tests/test_verify_judge.py checks `verify` fails, and bench/verify_judge.py measures.

Each edit takes the main block of a program mlopt rewrote and changes every rewritten norm in it; it returns what
it changed (nothing: the edit does not apply to that program).
"""

import os
import shutil

import numpy as np

from mlopt.graph.dtypes import FLOAT16
from mlopt.package import read_package
from mlopt.rewrites.spec_builder import OpEmitter
from test_interpreter_ops import literal_dtype

WRONG_EPS = 0.1  # a misread constant (1/N for N = 10 in place of 1e-6): large beside a mean square of ~1


def edited(source, dest, edit):
    """A copy of package `source` at `dest` whose main program `edit(block)` changed; returns dest."""
    shutil.copytree(source, dest)
    package = read_package(source)
    try:
        spec = package.spec
    finally:
        package.close()
    function = spec.mlProgram.functions["main"]
    block = function.block_specializations[function.opset]
    assert edit(block), "the edit found nothing to change"
    metadata = spec.description.metadata.userDefined  # this test wrote it, not mlopt: no provenance, so the
    for key in [k for k in metadata if k.startswith("com.github.mlopt.")]:  # suite's loader check (conftest)
        del metadata[key]  # does not hold a deliberately broken program against mlopt
    with open(os.path.join(dest, "Data", "com.apple.CoreML", "model.mlmodel"), "wb") as f:
        f.write(spec.SerializeToString())
    return dest


def _rebind(block, op, param, value):
    """Bind `op`'s `param` to a new const holding `value` (placed first in the block)."""
    const, name = OpEmitter([]).const(f"{op.outputs[0].name}_{param}_broken", np.asarray(value), literal_dtype(value))
    del op.inputs[param].arguments[:]
    op.inputs[param].arguments.add().name = name
    ops = [const] + list(block.operations)  # copies: `op` is edited before
    del block.operations[:]
    block.operations.extend(ops)


def _norms(block):
    return [op for op in block.operations if op.type == "layer_norm"]


def wrong_eps(block):
    declared = {out.name: out.type.tensorType.dataType for op in block.operations for out in op.outputs}
    for index in range(len(_norms(block))):
        op = _norms(block)[index]  # _rebind rebuilds the block: look the op up again
        dtype = np.float16 if declared[op.inputs["epsilon"].arguments[0].name] == FLOAT16 else np.float32
        _rebind(block, op, "epsilon", dtype(WRONG_EPS))
    return _norms(block)


def wrong_axis(block):
    for index in range(len(_norms(block))):
        _rebind(block, _norms(block)[index], "axes", np.array([-2], np.int32))
    return _norms(block)


def dropped_gamma(block):
    """The LayerNorm rule's gamma is layer_norm's input; the RMSNorm rule's is the mul after the slice."""
    changed = []
    for op in _norms(block):
        if "gamma" in op.inputs:
            del op.inputs["gamma"]
            changed.append(op)
    slices = {op.outputs[0].name for op in block.operations if op.type == "slice_by_index" and op.outputs[0].name.endswith("_rms_norm_slice")}
    for op in block.operations:
        if op.type == "mul" and op.inputs["x"].arguments[0].name in slices:
            op.type = "identity"
            del op.inputs["y"]
            changed.append(op)
    return changed


def concat_x_x(block):
    changed = []
    for op in block.operations:
        if op.type == "concat" and len(op.inputs["values"].arguments) == 2:
            op.inputs["values"].arguments[1].name = op.inputs["values"].arguments[0].name
            changed.append(op)
    return changed


BROKEN = {"wrong eps": wrong_eps, "wrong axis": wrong_axis, "dropped gamma": dropped_gamma, "concat([x, x])": concat_x_x}
