"""RMSNorm implementations from real model code, converted from PyTorch by coremltools (fixtures/real/).

For every package: exactly as many chains rewritten as the model code holds RMSNorms (expected.json, written by
the generator from the code, not from mlopt), every function's outputs equal before and after in the interpreter,
near-misses untouched to the bit, and a second run finds nothing to do.
"""

import json
import os

import numpy as np
import pytest

from conftest import FIXTURES, file_digest, fixture_path, main_view, run_package
from mlopt import optimize_package
from mlopt.analyses.verify import verify_packages

REAL = os.path.join(FIXTURES, "real")
with open(os.path.join(REAL, "expected.json")) as f:
    EXPECTED = json.load(f)
MODEL = os.path.join("Data", "com.apple.CoreML", "model.mlmodel")


def path(name):
    return fixture_path(name, "real")


def test_fixture_set_is_complete():
    on_disk = sorted(f[: -len(".mlpackage")] for f in os.listdir(REAL) if f.endswith(".mlpackage"))
    assert on_disk == sorted(EXPECTED)
    implementations = {e["implementation"] for e in EXPECTED.values() if not e["negative"]}
    assert len(implementations - {"decoder_llama", "decoder_qwen3", "stateful", "multifunction"}) >= 10


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_rewrites_every_norm_and_agrees(name, tmp_path):
    """Every RMSNorm rewritten by the rms_norm rule; a negative (not an RMSNorm) untouched by it - and, with the
    layer_norm rule skipped, untouched to the bit."""
    out = tmp_path / "o.mlpackage"
    negative = EXPECTED[name]["negative"]
    report = optimize_package(path(name), out, skip=["layer_norm"] if negative else ())
    expected = EXPECTED[name]["norms"]
    assert sum(c.status == "rewritten" and c.rule == "rms_norm" for f in report.functions for c in f.chains) == expected
    assert report.rewrites == expected, report.render()
    if negative:
        assert file_digest(out / MODEL) == file_digest(os.path.join(path(name), MODEL))
        return
    assert report.left_alone == 0, report.render()
    result = verify_packages(path(name), out)
    assert result.passed, result.render()
    again = optimize_package(out, tmp_path / "again.mlpackage")
    assert again.rewrites == 0


@pytest.mark.parametrize("name", sorted(n for n in EXPECTED if n.startswith("cohere")))
def test_cohere_layernorm_is_the_layer_norm_rules(name, tmp_path):
    """CohereLayerNorm (a mean-centred chain) is no RMSNorm; the layer_norm rule turns it into one layer_norm."""
    report = optimize_package(path(name), tmp_path / "o.mlpackage")
    (chain,) = report.functions[0].chains
    assert (chain.rule, chain.status) == ("layer_norm", "rewritten")
    assert verify_packages(path(name), tmp_path / "o.mlpackage").passed


@pytest.mark.parametrize("name", ["torch_rmsnorm_fp32_ios17", "torch_rmsnorm_fp16_ios15", "functional_2d_fp32_ios17"])
def test_max_scaled_lowering_fixed_for_all_zero_rows(name, tmp_path):
    """coremltools' torch.nn.RMSNorm lowering divides by max|x|: an all-zero row is 0/0 = NaN. With the true eps
    the rewrite gives 0 there, and elsewhere equals x / sqrt(mean(x^2) + eps) * w."""
    out = tmp_path / "o.mlpackage"
    report = optimize_package(path(name), out)
    (chain,) = report.functions[0].chains
    assert chain.note.startswith("coremltools' max-scaled torch.nn.RMSNorm lowering")
    view = main_view(path(name))
    (inp,) = view.function.inputs
    shape = [d.constant.size for d in inp.type.tensorType.dimensions]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    zero = tuple(slice(None) if i in chain.axes else 0 for i in range(len(shape)))  # one row over the normalised axes
    x[zero] = 0.0
    before, after = run_package(path(name), {inp.name: x}), run_package(str(out), {inp.name: x})
    (value,) = before
    assert np.isnan(before[value][zero]).all()
    assert np.all(after[value][zero] == 0)
    assert np.isfinite(after[value]).all()
    rest = np.ones(shape, bool)
    rest[zero] = False
    np.testing.assert_allclose(after[value][rest], before[value][rest], rtol=1e-2 if "fp16" in name else 1e-4, atol=1e-3)


def test_multifunction_both_functions_rewritten(tmp_path):
    out = tmp_path / "o.mlpackage"
    report = optimize_package(path("multifunction_fp16_ios18"), out)
    assert {f.name: f.count("rewritten") for f in report.functions} == {"decode": 5, "prefill": 5}
    for fn in ("prefill", "decode"):
        before, after = main_view(path("multifunction_fp16_ios18"), fn), main_view(str(out), fn)
        assert [i.name for i in after.function.inputs] == [i.name for i in before.function.inputs]
        assert list(after.main.outputs) == list(before.main.outputs)
        assert sum(op.type == "layer_norm" for op in after.main.operations) == 5
    from mlopt.package import read_package

    spec_before, spec_after = read_package(path("multifunction_fp16_ios18")).spec, read_package(out).spec
    assert spec_after.description.defaultFunctionName == spec_before.description.defaultFunctionName == "prefill"
    assert [f.name for f in spec_after.description.functions] == [f.name for f in spec_before.description.functions]


def test_stateful_model_keeps_its_state_ops(tmp_path):
    out = tmp_path / "o.mlpackage"
    assert optimize_package(path("stateful_fp16_ios18"), out).rewrites == 2
    state_ops = lambda p: [(op.type, [o.name for o in op.outputs]) for op in main_view(p).main.operations if "state" in op.type]  # noqa: E731
    assert state_ops(str(out)) == state_ops(path("stateful_fp16_ios18"))
    assert [i.name for i in main_view(str(out)).function.inputs] == ["x0", "acc"]
