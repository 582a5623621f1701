"""RMSNorm pattern tests in memory: each spelling as an `@mb.program`, matched through the pymil adapter
(PymilGraph), with the match read back or the exact reason - no fixture to regenerate. The committed fixtures cover
the same forms end to end (tests/rules/test_rms_norm_converter_forms.py, tests/test_rewrite.py). The LayerNorm
spellings are in test_layer_norm_patterns.py, which shares these helpers."""

import numpy as np
import pytest

import coremltools as ct
from coremltools.converters.mil import Builder as mb

from mlopt.coreml.pymil_graph import PymilGraph
from mlopt.patterns.status import ConditionFailed, Matched, Recognised
from mlopt.rules import find_candidates

H, S = 16, 4
EPS = 1e-5
G = np.linspace(0.5, 1.5, H).astype(np.float32)
B = np.linspace(-1.0, 1.0, H).astype(np.float32)


def found(body, shape=(1, S, H)):
    prog = mb.program(input_specs=[mb.TensorSpec(shape=shape)], opset_version=ct.target.iOS17)(body)
    return find_candidates(PymilGraph("main", prog.functions["main"]))


def one(body, shape=(1, S, H)):
    (candidate,) = found(body, shape)
    return candidate


def f32(v):
    return np.float32(v)


# -- RMSNorm spellings ------------------------------------------------------------------------------------------
def textbook(x):
    ms = mb.reduce_mean(x=mb.pow(x=x, y=f32(2)), axes=[-1], keep_dims=True)
    return mb.mul(x=mb.mul(x=x, y=mb.rsqrt(x=mb.add(x=ms, y=f32(EPS)))), y=G)


def stablehlo(x):
    """kasper0406/stablehlo-coreml: reduce_sum without keep_dims, 1/N, reshape back, tile of the statistic and of
    gamma."""
    s = mb.reduce_sum(x=mb.mul(x=x, y=x), axes=[2], keep_dims=False)
    m = mb.reshape(x=mb.mul(x=s, y=f32(1.0 / H)), shape=[1, S, 1])
    r = mb.tile(x=mb.rsqrt(x=mb.add(x=m, y=f32(EPS))), reps=[1, 1, H])
    g = mb.tile(x=mb.reshape(x=G, shape=[1, 1, H]), reps=[1, S, 1])
    return mb.mul(x=mb.mul(x=x, y=r), y=g)


def eps_folded(x):
    """kasper0406/gemma-coreml-chat mil_passes/fuse_reduce_sum_to_mean.py, variant 2: eps * N added to the sum."""
    s = mb.reduce_sum(x=mb.square(x=x), axes=[-1], keep_dims=True)
    m = mb.mul(x=mb.add(x=s, y=f32(EPS * H)), y=f32(1.0 / H))
    return mb.mul(x=mb.mul(x=x, y=mb.rsqrt(x=m)), y=G)


def sum_square_div(x):
    m = mb.real_div(x=mb.reduce_sum_square(x=x, axes=[-1], keep_dims=True), y=f32(H))
    return mb.mul(x=mb.mul(x=x, y=mb.rsqrt(x=mb.add(x=m, y=f32(EPS)))), y=G)


def restored_after_root(x):
    ms = mb.reduce_mean(x=mb.square(x=x), axes=[-1], keep_dims=False)
    return mb.mul(x=mb.mul(x=x, y=mb.expand_dims(x=mb.rsqrt(x=mb.add(x=ms, y=f32(EPS))), axes=[-1])), y=G)


def max_abs(floor=None, rescale=True, eps_over_m2=False):
    def body(x):
        m = mb.reduce_max(x=mb.abs(x=x), axes=[-1], keep_dims=True)
        if floor is not None:
            m = mb.maximum(x=m, y=f32(floor))
        xs = mb.real_div(x=x, y=m)
        ms = mb.reduce_mean(x=mb.square(x=xs), axes=[-1], keep_dims=True)
        eps = mb.real_div(x=f32(EPS), y=mb.mul(x=m, y=m)) if eps_over_m2 else f32(EPS)
        if not rescale:  # executorch examples/apple/coreml/llama/llama_transformer.py
            return mb.mul(x=mb.mul(x=xs, y=mb.rsqrt(x=mb.add(x=ms, y=eps))), y=G)
        rms = mb.mul(x=mb.sqrt(x=mb.add(x=ms, y=eps)), y=m)
        return mb.mul(x=mb.real_div(x=x, y=rms), y=G)

    return body


def l2_form(x):
    """sbryngelson/ANEForge aneforge/_compile.py: x / max(||x||, sqrt(D * eps)) * (gamma * sqrt(D))."""
    n = mb.maximum(x=mb.reduce_l2_norm(x=x, axes=[-1], keep_dims=True), y=f32(np.sqrt(H * EPS)))
    return mb.mul(x=mb.real_div(x=x, y=n), y=G * np.float32(np.sqrt(H)))


def trick(x):
    both = mb.concat(values=[x, mb.mul(x=x, y=f32(-1))], axis=-1)
    half = mb.slice_by_index(x=mb.layer_norm(x=both, axes=[-1], epsilon=f32(EPS)), begin=[0, 0, 0], end=[1, S, H])
    return mb.mul(x=half, y=G)


MAX_SCALED = "it computed x / sqrt(mean(x^2) + eps * {m}^2){nan}; rewritten with the true eps"


@pytest.mark.parametrize("body, eps, note", [
    (textbook, EPS, None),
    (stablehlo, EPS, None),
    (eps_folded, EPS, None),
    (sum_square_div, EPS, None),
    (restored_after_root, EPS, None),
    (max_abs(), EPS, "coremltools' max-scaled torch.nn.RMSNorm lowering: " + MAX_SCALED.format(m="max|x|", nan=" and gave NaN on an all-zero row")),
    (max_abs(floor=1e-6), EPS, "max|x| pre-scaled chain: " + MAX_SCALED.format(m="max(max|x|, 1e-06)", nan="")),
    (max_abs(rescale=False), EPS, "max|x| pre-scaled chain without a rescale by max|x| (as executorch's Core ML llama norm): "
     + MAX_SCALED.format(m="max|x|", nan=" and gave NaN on an all-zero row")),
    (max_abs(floor=1.0, eps_over_m2=True), EPS, None),  # apple/coremltools PR 2822: exact, nothing to say
], ids=["textbook", "stablehlo", "eps_folded", "sum_square_div", "restored_after_root", "max_abs", "max_abs_floor",
        "executorch", "pr2822"])
def test_rms_norm_spellings_match(body, eps, note):
    c = one(body)
    assert isinstance(c.status, Matched), c.reason
    m = c.match
    assert c.rule.name == "rms_norm"
    assert m.axes == (2,) and m.x == "x"
    assert m.params["epsilon"] == pytest.approx(eps, rel=1e-6)
    assert m.operands["gamma"] is not None
    assert m.note == note


def test_eps_folded_reads_the_true_eps_and_scale():
    m = one(eps_folded).match
    assert m.facts["eps"] == pytest.approx(EPS, rel=1e-6) and m.facts["mean_scale"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("body, kind, reason", [
    (l2_form, "RMSNorm (L2 form)", "already stable on the Neural Engine (one fused reduce_l2_norm, no fp16 x^2); eps "
     f"enters as a floor on the norm, max(||v||, {np.float32(np.sqrt(H * EPS)):g}) over N = 16 values, not added under the root"),
    (trick, "RMSNorm (LayerNorm trick)", "already rewritten: layer_norm(concat([x, -x])) read back as its first half"),
], ids=["l2", "trick"])
def test_recognised_and_left_alone(body, kind, reason):
    c = one(body)
    assert isinstance(c.status, Recognised)
    assert (c.status.kind, c.status.reason) == (kind, reason)


def test_f_normalize_is_not_a_candidate():
    """x / max(||x||, eps) with nothing making it an RMS (no scale): a plain L2 normalisation, not listed."""
    def body(x):
        return mb.real_div(x=x, y=mb.maximum(x=mb.reduce_l2_norm(x=x, axes=[-1], keep_dims=True), y=f32(1e-12)))

    assert [c for c in found(body) if c.rule.name == "rms_norm" and not isinstance(c.status, Recognised)] == []


def test_concat_of_x_with_itself_is_not_the_trick():
    def body(x):
        both = mb.concat(values=[x, x], axis=-1)
        return mb.slice_by_index(x=mb.layer_norm(x=both, axes=[-1], epsilon=f32(EPS)), begin=[0, 0, 0], end=[1, S, H])

    assert found(body) == []


@pytest.mark.parametrize("body, reason", [
    (lambda x: mb.mul(x=x, y=mb.rsqrt(x=mb.add(x=mb.mul(x=mb.reduce_sum(x=mb.square(x=x), axes=[-1], keep_dims=True),
                                                               y=f32(0.5)), y=f32(EPS)))),
     "reduce_sum scaled by 0.5, not 1/16"),
    (lambda x: mb.mul(x=x, y=mb.rsqrt(x=mb.add(x=mb.reduce_sum(x=mb.square(x=x), axes=[-1], keep_dims=True), y=f32(EPS)))),
     "reduce_sum, not reduce_mean: no 1/N scale"),
    (lambda x: mb.mul(x=x, y=mb.rsqrt(x=mb.add(x=mb.reduce_mean(x=mb.square(x=x), axes=[1], keep_dims=False), y=f32(EPS)))),
     "keep_dims is false"),
    (lambda x: mb.mul(x=x, y=mb.rsqrt(x=mb.add(x=mb.reduce_mean(x=mb.square(x=x), axes=[-1], keep_dims=True), y=f32(-EPS)))),
     "epsilon is -1e-05: not a valid RMSNorm epsilon"),
    (lambda x: mb.mul(x=x, y=mb.tile(x=mb.rsqrt(x=mb.add(x=mb.reshape(x=mb.reduce_mean(x=mb.square(x=x), axes=[2], keep_dims=False),
                                                                      shape=[S, 1, 1]), y=f32(EPS))), reps=[1, 1, H])),
     "reshape of the statistic to another shape than the reduction with keep_dims"),
], ids=["sum_half", "sum_unscaled", "keep_dims_false", "negative_eps", "reshape_permutes"])
def test_rms_norm_near_misses(body, reason):
    c = one(body)
    assert isinstance(c.status, ConditionFailed)
    assert c.reason == reason
