"""`verify`: run two packages on the same inputs in the interpreter and compare every output of every function.

The tolerance follows the precision the function computes in, not only its output dtype: a fp16 model with fp32
outputs (the converter casts them back) is held to fp16 tolerance. `rtol`/`atol` override it.
"""

import os
from dataclasses import dataclass, field

import numpy as np

from ..errors import BadInputError
from ..graph import FunctionView
from ..graph.dtypes import FLOAT16, FLOAT32, NUMPY
from ..package import read_package
from .compare import compare, tolerance_for
from .inputs import random_inputs
from .interpreter import run_function
from .weights import BlobReader


@dataclass
class OutputCheck:
    function: str
    output: str
    max_abs: float
    max_rel: float
    rtol: float
    atol: float
    passed: bool
    problem: str = None


@dataclass
class VerifyReport:
    reference: str
    candidate: str
    seed: int
    checks: list = field(default_factory=list)

    @property
    def passed(self):
        return bool(self.checks) and all(c.passed for c in self.checks)

    def render(self):
        lines = [f"mlopt verify {self.candidate} against {self.reference} (seed {self.seed})"]
        for c in self.checks:
            verdict = "pass" if c.passed else "FAIL"
            detail = c.problem or f"max abs {c.max_abs:.3g}, max rel {c.max_rel:.3g} (rtol {c.rtol:g}, atol {c.atol:g})"
            lines.append(f"  {verdict}  {c.function}/{c.output}: {detail}")
        lines.append(f"  {'all outputs agree' if self.passed else 'outputs differ'}")
        return "\n".join(lines)

    def to_dict(self):
        from ..report import json_safe

        return json_safe(
            dict(reference=self.reference, candidate=self.candidate, seed=self.seed, passed=self.passed,
                 checks=[c.__dict__ for c in self.checks])
        )


def verify_packages(reference_path, candidate_path, seed=0, inputs_path=None, rtol=None, atol=None, scale=1.0):
    ref, cand = read_package(reference_path), read_package(candidate_path)
    given = _load_inputs(inputs_path)
    report = VerifyReport(os.fspath(reference_path), os.fspath(candidate_path), seed)
    ref_blobs, cand_blobs = BlobReader(os.path.dirname(ref.model_path)), BlobReader(os.path.dirname(cand.model_path))
    for name in sorted(ref.spec.mlProgram.functions):
        ref_fn = ref.spec.mlProgram.functions[name]
        if name not in cand.spec.mlProgram.functions:
            report.checks.append(OutputCheck(name, "*", 0, 0, 0, 0, False, problem=f"function missing in {candidate_path}"))
            continue
        cand_fn = cand.spec.mlProgram.functions[name]
        if _signature(ref_fn) != _signature(cand_fn):
            raise BadInputError(candidate_path, f"function '{name}' takes other inputs than in {reference_path}")
        ref_view = FunctionView(name, ref_fn)
        cand_view = FunctionView(name, cand_fn)
        feeds = random_inputs(ref.spec, ref_fn, np.random.default_rng(seed), scale)
        feeds.update(_given_for(given, name, feeds))
        ref_out = run_function(ref_view, ref_blobs, feeds)
        cand_out = run_function(cand_view, cand_blobs, feeds)
        default_rtol, default_atol = tolerance_for(_precision(ref_view), _precision(cand_view))
        for out in ref_view.main.outputs:
            if out not in cand_out:
                report.checks.append(OutputCheck(name, out, 0, 0, 0, 0, False, problem=f"output missing in {candidate_path}"))
                continue
            d = compare(
                cand_out[out], ref_out[out],
                rtol=default_rtol if rtol is None else rtol,
                atol=default_atol if atol is None else atol,
            )
            problem = f"{d.mismatched_nonfinite} NaN/inf elements differ" if d.mismatched_nonfinite else None
            report.checks.append(OutputCheck(name, out, d.max_abs, d.max_rel, d.rtol, d.atol, d.passed, problem))
    return report


def _signature(function):
    return [(i.name, i.type.SerializeToString(deterministic=True)) for i in function.inputs]


def _precision(view):
    """numpy dtype of the narrowest float the function computes in."""
    dtypes = {t.tensorType.dataType for t in view.types.values() if t.WhichOneof("type") == "tensorType"}
    return NUMPY[FLOAT16] if FLOAT16 in dtypes else NUMPY[FLOAT32]


def _load_inputs(path):
    if path is None:
        return {}
    if not os.path.isfile(path):
        raise BadInputError(path, "no such file")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (ValueError, OSError) as e:
        raise BadInputError(path, f"not a readable .npz file ({e})") from None


def _given_for(given, function, feeds):
    """Arrays for `function` from an .npz: keys `function/input`, or plain `input` names."""
    picked = {}
    for name, value in feeds.items():
        key = f"{function}/{name}" if f"{function}/{name}" in given else name
        if key in given:
            picked[name] = np.asarray(given[key]).astype(value.dtype)
    return picked
