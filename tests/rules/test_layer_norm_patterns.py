"""LayerNorm pattern tests in memory: each spelling as an `@mb.program`, matched through the pymil adapter
(PymilGraph), with the match read back or the exact reason. The committed fixtures cover the same forms end to end
(tests/rules/test_layer_norm.py). Helpers and the textbook RMSNorm come from test_rms_norm_patterns.py."""

import numpy as np
import pytest

from coremltools.converters.mil import Builder as mb

from mlopt.patterns.status import ConditionFailed, Matched
from test_rms_norm_patterns import B, EPS, G, H, S, f32, found, one, textbook


# -- LayerNorm spellings ----------------------------------------------------------------------------------------
def centred_variance(x, square="mul"):
    d = mb.sub(x=x, y=mb.reduce_mean(x=x, axes=[-1], keep_dims=True))
    sq = mb.mul(x=d, y=d) if square == "mul" else mb.square(x=d) if square == "square" else mb.pow(x=d, y=f32(2))
    return d, mb.reduce_mean(x=sq, axes=[-1], keep_dims=True)


def cohere(x):
    """transformers CohereLayerNorm: rsqrt, gamma only."""
    d, var = centred_variance(x, "pow")
    return mb.mul(x=mb.mul(x=d, y=mb.rsqrt(x=mb.add(x=var, y=f32(EPS)))), y=G)


def bert(x):
    """BertLayerNorm / DTLN's instant layer norm: sqrt and real_div, gamma and beta."""
    d, var = centred_variance(x)
    return mb.add(x=mb.mul(x=mb.real_div(x=d, y=mb.sqrt(x=mb.add(x=var, y=f32(EPS)))), y=G), y=B)


def moments(x):
    """E[x^2] - E[x]^2."""
    mean = mb.reduce_mean(x=x, axes=[-1], keep_dims=True)
    var = mb.sub(x=mb.reduce_mean(x=mb.square(x=x), axes=[-1], keep_dims=True), y=mb.mul(x=mean, y=mean))
    return mb.mul(x=mb.sub(x=x, y=mean), y=mb.rsqrt(x=mb.add(x=var, y=f32(EPS))))


def summed(x):
    """StableHLO-style means: reduce_sum without keep_dims, reshape, 1/N, tile."""
    mean = mb.tile(x=mb.mul(x=mb.reshape(x=mb.reduce_sum(x=x, axes=[2], keep_dims=False), shape=[1, S, 1]), y=f32(1.0 / H)),
                   reps=[1, 1, H])
    d = mb.sub(x=x, y=mean)
    var = mb.mul(x=mb.reshape(x=mb.reduce_sum(x=mb.mul(x=d, y=d), axes=[2], keep_dims=False), shape=[1, S, 1]), y=f32(1.0 / H))
    return mb.mul(x=d, y=mb.tile(x=mb.rsqrt(x=mb.add(x=var, y=f32(EPS))), reps=[1, 1, H]))


def channels_first(x):
    mean = mb.reduce_mean(x=x, axes=[1], keep_dims=True)
    d = mb.sub(x=x, y=mean)
    var = mb.reduce_mean(x=mb.square(x=d), axes=[1], keep_dims=True)
    return mb.real_div(x=d, y=mb.sqrt(x=mb.add(x=var, y=f32(EPS))))


@pytest.mark.parametrize("body, shape, axes, gamma, beta", [
    (cohere, (1, S, H), (2,), True, False),
    (bert, (1, S, H), (2,), True, True),
    (moments, (1, S, H), (2,), False, False),
    (summed, (1, S, H), (2,), False, False),
    (channels_first, (1, H, 1, S), (1,), False, False),
], ids=["cohere", "bert", "moments", "summed", "channels_first"])
def test_layer_norm_spellings_match(body, shape, axes, gamma, beta):
    c = one(body, shape)
    assert isinstance(c.status, Matched), c.reason
    m = c.match
    assert c.rule.name == "layer_norm" and m.x == "x" and m.axes == axes
    assert m.params["epsilon"] == pytest.approx(EPS, rel=1e-6)
    assert (m.operands["gamma"] is not None, m.operands["beta"] is not None) == (gamma, beta)


def biasfree(x):
    """Restormer BiasFree_LayerNorm: the variance of x - mean, but x itself normalised."""
    _, var = centred_variance(x)
    return mb.real_div(x=x, y=mb.sqrt(x=mb.add(x=var, y=f32(EPS))))


def cross_axis(x):
    d = mb.sub(x=x, y=mb.reduce_mean(x=x, axes=[1], keep_dims=True))
    return mb.mul(x=d, y=mb.rsqrt(x=mb.add(x=mb.reduce_mean(x=mb.mul(x=d, y=d), axes=[-1], keep_dims=True), y=f32(EPS))))


def unbiased(x):
    """The Annotated Transformer: x.std() (N / (N - 1)), eps outside the root."""
    d, var = centred_variance(x)
    return mb.real_div(x=d, y=mb.add(x=mb.sqrt(x=mb.mul(x=var, y=f32(H / (H - 1)))), y=f32(EPS)))


@pytest.mark.parametrize("body, reason", [
    (biasfree, "normalises a tensor that is not mean-centred (x / std(x)): not a LayerNorm"),
    (cross_axis, "mean over axes [1], variance over [2]: not one LayerNorm"),
    (unbiased, f"the variance is scaled by {np.float32(H / (H - 1)):g}: not a mean"),
], ids=["biasfree", "cross_axis", "unbiased"])
def test_layer_norm_near_misses(body, reason):
    c = one(body)
    assert (c.rule.name, type(c.status)) == ("layer_norm", ConditionFailed)
    assert c.reason == reason


def test_a_layer_norm_the_rule_cannot_read_is_named_by_the_rms_norm_rule():
    """A mean-centred chain the layer_norm rule does not take (here: its mean is taken over a tensor read
    through an op it does not follow) is still not an RMSNorm: recognised as a LayerNorm, left alone."""
    def body(x):
        mean = mb.reduce_mean(x=x, axes=[-1], keep_dims=True)
        d = mb.sub(x=x, y=mean)
        ms = mb.reduce_mean(x=mb.mul(x=d, y=d), axes=[-1], keep_dims=True)
        return mb.mul(x=d, y=mb.rsqrt(x=mb.add(x=ms, y=mb.reduce_max(x=x, axes=[-1], keep_dims=True))))

    c = one(body)
    assert c.rule.name == "layer_norm" and c.reason == "adds a non-constant to the variance"


def test_a_layer_norm_and_an_rms_norm_in_one_function():
    def body(x):
        return textbook(bert(x))

    assert [(c.rule.name, type(c.status)) for c in found(body)] == [("layer_norm", Matched), ("rms_norm", Matched)]
