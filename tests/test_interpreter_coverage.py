"""Every op coremltools 9 can write for iOS15-iOS18 is implemented by the interpreter or excluded with a reason,
and the ops added for that coverage agree with coremltools' value_inference (pymil) or, where pymil has none,
with a formula or loop written here independently of mlopt/numerics/ops."""

import math

import numpy as np
import pytest

import coremltools as ct
from coremltools.converters.mil.mil import types
from coremltools.converters.mil.mil.ops.registry import SSAOpRegistry

from mlopt.graph import SpecGraph
from mlopt.numerics.interpreter import Evaluator
from mlopt.numerics.ops import EXCLUDED, IMPLEMENTATIONS
from mlopt.package.proto import MIL_pb2
from mlopt.graph.emit import OpEmitter
from test_interpreter_ops import assert_matches_value_inference, literal_dtype, pymil_value, run_interpreter

OPSETS = (ct.target.iOS15, ct.target.iOS16, ct.target.iOS17, ct.target.iOS18)
DEFS = "coremltools.converters.mil.mil.ops.defs."
INTERPRETER_OPS = {"const", "cond", "while_loop", "read_state", "write_state"}  # handled by the Evaluator itself


def writable_ops():
    """Ops coremltools itself defines for the opsets (other tests register ops of their own, e.g. mlopt_rms_norm)."""
    return sorted(
        op
        for op, versions in SSAOpRegistry.core_ops.items()
        if any(cls is not None and cls.__module__.startswith(DEFS) for cls in map(versions.get, OPSETS))
    )


def test_every_op_of_ios15_to_ios18_is_implemented_or_excluded():
    ops = writable_ops()
    assert len(ops) > 150  # the registry was read (coremltools 9 has ~168)
    missing = [op for op in ops if op not in IMPLEMENTATIONS and op not in INTERPRETER_OPS and op not in EXCLUDED]
    assert not missing, f"neither implemented nor excluded: {missing}"


def test_exclusions_are_real_unimplemented_ops_with_a_reason():
    ops = set(writable_ops())
    for op, reason in EXCLUDED.items():
        assert op in ops and op not in IMPLEMENTATIONS, op
        assert len(reason) > 40, op


rng = np.random.default_rng(1)
X = rng.standard_normal((2, 3, 4)).astype(np.float32)
X16 = X.astype(np.float16)
IMG = rng.standard_normal((1, 8, 4, 6)).astype(np.float32)
UNIT = np.tanh(X) * 0.9
CH = np.array([0.5, -1.0, 2.0], np.float32)  # per-channel parameter for x of 3 channels
S = np.float32(1.5)  # rank-0 input

# (op_type, opset, kwargs): coremltools computes the value
VALUE_CASES = {
    "acos": ("acos", None, dict(x=UNIT)), "asin": ("asin", None, dict(x=UNIT)), "atan": ("atan", None, dict(x=X)),
    "atanh": ("atanh", None, dict(x=UNIT)), "sinh": ("sinh", None, dict(x=X)), "cosh": ("cosh", None, dict(x=X)),
    "asin_scalar": ("asin", None, dict(x=np.float32(0.3))),
    "elu": ("elu", None, dict(x=X, alpha=np.float32(0.7))), "elu_fp16": ("elu", None, dict(x=X16, alpha=np.float16(0.7))),
    "thresholded_relu": ("thresholded_relu", None, dict(x=X, alpha=np.float32(0.2))),
    "threshold": ("threshold", None, dict(x=X, alpha=np.float32(0.2))),
    "clamped_relu": ("clamped_relu", ct.target.iOS15, dict(x=X, alpha=np.float32(0.1), beta=np.float32(0.8))),
    "linear_activation": ("linear_activation", None, dict(x=X, alpha=np.float32(2.0), beta=np.float32(-1.0))),
    "scaled_tanh": ("scaled_tanh", None, dict(x=X, alpha=np.float32(1.7), beta=np.float32(0.6))),
    "sigmoid_hard": ("sigmoid_hard", None, dict(x=X, alpha=np.float32(0.2), beta=np.float32(0.5))),
    "sigmoid_hard_scalar": ("sigmoid_hard", None, dict(x=S, alpha=np.float32(0.2), beta=np.float32(0.5))),
    "softsign": ("softsign", None, dict(x=X)),
    "prelu": ("prelu", ct.target.iOS15, dict(x=IMG[:, :3], alpha=CH)),
    "softplus_parametric": ("softplus_parametric", ct.target.iOS15, dict(x=X[None], alpha=np.abs(CH[:2]), beta=CH[:2])),
    "argsort": ("argsort", None, dict(x=X, axis=1)), "argsort_asc": ("argsort", None, dict(x=X, axis=-1, ascending=True)),
    "topk": ("topk", None, dict(x=X, k=2, axis=-1)), "topk_asc": ("topk", None, dict(x=X, k=3, axis=1, ascending=True)),
    "cumsum": ("cumsum", None, dict(x=X, axis=1)), "cumsum_rev": ("cumsum", None, dict(x=X, axis=2, reverse=True)),
    "fill_like": ("fill_like", None, dict(ref_tensor=X, value=np.float32(2.5))),
    "flatten2d": ("flatten2d", None, dict(x=X, axis=2)),
    "non_zero": ("non_zero", None, dict(x=X > 0.5)),
    "pad": ("pad", None, dict(x=X, pad=np.array([1, 0, 2, 1], np.int32), constant_val=np.float32(3.0))),
    "pad_reflect": ("pad", None, dict(x=X, pad=np.array([1, 2], np.int32), mode="reflect")),
    "pad_replicate": ("pad", None, dict(x=X, pad=np.array([0, 1, 2, 1], np.int32), mode="replicate")),
    "stack": ("stack", None, dict(values=(X, X * 2), axis=1)), "stack_scalars": ("stack", None, dict(values=(S, S * 2), axis=0)),
    "reverse": ("reverse", None, dict(x=X, axes=np.array([0, 2], np.int32))), "reverse_all": ("reverse", None, dict(x=X)),
    "l2_norm": ("l2_norm", None, dict(x=X[None], epsilon=np.float32(1e-6))),
    "scatter_along_axis": ("scatter_along_axis", None, dict(
        data=X, indices=np.array([[[0, 2, 1, 0]], [[1, 1, 2, 0]]], np.int32), updates=X[:, :1] * 10, axis=1, mode="update")),
    "scaled_dot_product_attention": ("scaled_dot_product_attention", ct.target.iOS18, dict(query=X, key=X[:, ::-1] * 0.5, value=X * 2)),
    "sdpa_mask": ("scaled_dot_product_attention", ct.target.iOS18, dict(query=X, key=X * 0.5, value=X, attn_mask=np.tril(np.ones((3, 3), bool)))),
    "sdpa_float_mask": ("scaled_dot_product_attention", ct.target.iOS18, dict(query=X, key=X * 0.5, value=X, attn_mask=X[0, :, :3])),
    "slice_update": ("slice_update", ct.target.iOS18, dict(x=X, update=np.ones((2, 1, 2), np.float32), begin=np.array([0, 1, 0], np.int32),
                                                         end=np.array([2, 2, 4], np.int32), stride=np.array([1, 1, 2], np.int32))),
}


@pytest.mark.parametrize("case", sorted(VALUE_CASES))
def test_added_op_matches_value_inference(case):
    op_type, opset, kwargs = VALUE_CASES[case]
    assert_matches_value_inference(op_type, kwargs, case, opset or ct.target.iOS17)


def test_quantize_matches_value_inference():
    kwargs = dict(input=X, scale=np.float32(0.02), zero_point=np.uint8(128), output_dtype="uint8")
    ((want, _),) = pymil_value("quantize", kwargs)
    np.testing.assert_array_equal(IMPLEMENTATIONS["quantize"](**kwargs), want)


def check(op_type, kwargs, expected, dtype=types.fp32, tol=1e-5):
    outs = expected if isinstance(expected, list) else [expected]
    got = run_interpreter(op_type, kwargs, [(np.asarray(e), dtype) for e in outs])
    for want, have in zip(outs, got):
        np.testing.assert_allclose(have.astype(np.float64), np.asarray(want, np.float64), rtol=tol, atol=tol)


def windows(x, k, s, p, fill):
    """All pooling windows of a (N, C, H, W) array by explicit loops: (N, C, out_h, out_w, kh*kw)."""
    x = np.pad(x, [(0, 0), (0, 0), (p[0], p[1]), (p[2], p[3])], constant_values=fill)
    oh, ow = (x.shape[2] - k[0]) // s[0] + 1, (x.shape[3] - k[1]) // s[1] + 1
    out = np.zeros(x.shape[:2] + (oh, ow, k[0] * k[1]))
    for i in range(oh):
        for j in range(ow):
            out[:, :, i, j] = x[:, :, i * s[0] : i * s[0] + k[0], j * s[1] : j * s[1] + k[1]].reshape(x.shape[:2] + (-1,))
    return out


POOL = dict(x=IMG, kernel_sizes=np.array([2, 3], np.int32), strides=np.array([2, 1], np.int32), pad_type="custom",
            pad=np.array([1, 0, 1, 1], np.int32))


def test_max_pool_against_loops():
    check("max_pool", POOL, windows(IMG, (2, 3), (2, 1), (1, 0, 1, 1), -np.inf).max(-1))


def test_avg_pool_against_loops():
    w, ones = windows(IMG, (2, 3), (2, 1), (1, 0, 1, 1), 0), windows(np.ones_like(IMG), (2, 3), (2, 1), (1, 0, 1, 1), 0)
    check("avg_pool", POOL, w.mean(-1))
    check("avg_pool", dict(POOL, exclude_padding_from_average=True), w.sum(-1) / ones.sum(-1))


def test_l2_pool_and_same_padding_against_loops():
    kw = dict(x=IMG, kernel_sizes=np.array([3, 3], np.int32), strides=np.array([1, 1], np.int32), pad_type="same")
    check("l2_pool", kw, np.sqrt((windows(IMG, (3, 3), (1, 1), (1, 1, 1, 1), 0) ** 2).sum(-1)))


def test_max_pool_ceil_mode_adds_a_partial_window():
    x = np.arange(5, dtype=np.float32).reshape(1, 1, 1, 5)
    kw = dict(x=x, kernel_sizes=np.array([1, 2], np.int32), strides=np.array([1, 2], np.int32), pad_type="valid", ceil_mode=True)
    check("max_pool", kw, np.array([1, 3, 4], np.float32).reshape(1, 1, 1, 3))


def test_activations_on_fp16_stay_fp16():
    (got,) = run_interpreter("elu", dict(x=X16, alpha=np.float32(0.5)), [(X16, types.fp16)])
    assert got.dtype == np.float16


def test_gather_nd_against_indexing():
    idx = np.array([[[0, 2], [1, 0]], [[1, 1], [0, 1]]], np.int32)
    check("gather_nd", dict(x=X, indices=idx), np.array([[X[0, 2], X[1, 0]], [X[1, 1], X[0, 1]]]))
    check("gather_nd", dict(x=X, indices=idx[:, :, :1], batch_dims=1), np.stack([X[0][[0, 1]], X[1][[1, 0]]]))


def test_scatters_against_loops():
    idx = np.array([2, 0, 2], np.int32)
    upd = rng.standard_normal((2, 3, 4)).astype(np.float32)
    want = X.astype(np.float64).copy()
    for i, j in enumerate(idx):
        want[:, j] += upd[:, i]
    check("scatter", dict(data=X, indices=idx, updates=upd, axis=1), want)
    nd = np.array([[1, 2], [0, 0], [1, 2]], np.int32)
    want = X.astype(np.float64).copy()
    for i, (a, b) in enumerate(nd):
        want[a, b] = np.maximum(want[a, b], upd[0, i] * 5)
    check("scatter_nd", dict(data=X, indices=nd, updates=upd[0, :3] * 5, mode="max"), want)


def test_one_hot_and_concat_of_scalars():
    check("one_hot", dict(indices=np.array([2, 0], np.int32), one_hot_vector_size=np.int32(3), axis=np.int32(0),
                          on_value=np.float32(5), off_value=np.float32(-1)), np.array([[-1, 5], [-1, -1], [5, -1]]))
    check("concat", dict(values=(np.int32(4), np.int32(7)), axis=np.int32(0)), np.array([4, 7]), dtype=types.int32)


def test_norms_against_formulas():
    mean, var = CH, np.abs(CH) + 0.5
    x = IMG[:, :3].astype(np.float64)
    c = lambda v: np.asarray(v, np.float64).reshape(1, 3, 1, 1)  # noqa: E731
    check("batch_norm", dict(x=IMG[:, :3], mean=mean, variance=var, gamma=CH * 2, beta=CH, epsilon=np.float32(1e-3)),
          (x - c(mean)) / np.sqrt(c(var) + 1e-3) * c(CH * 2) + c(CH))
    m, v = x.mean((2, 3), keepdims=True), x.var((2, 3), keepdims=True)
    check("instance_norm", dict(x=IMG[:, :3], gamma=CH, beta=CH * 0, epsilon=np.float32(1e-5)), (x - m) / np.sqrt(v + 1e-5) * c(CH), tol=1e-4)
    sq = np.pad(IMG.astype(np.float64) ** 2, [(0, 0), (1, 1), (0, 0), (0, 0)])
    want = IMG / (1 + 1e-2 / 3 * sum(sq[:, i : i + 8] for i in range(3))) ** 0.75
    check("local_response_norm", dict(x=IMG, size=np.int32(3), alpha=np.float32(1e-2)), want)


def test_block_rearrangements_against_index_formulas():
    b, (n, c, h, w) = 2, IMG.shape
    s2d = np.zeros((n, c * 4, h // 2, w // 2))
    shuffle = np.zeros((n, c // 4, h * 2, w * 2))
    for ch in range(c):
        for i in range(h):
            for j in range(w):
                s2d[0, ((i % b) * b + j % b) * c + ch, i // b, j // b] = IMG[0, ch, i, j]  # TF: (row, col, channel)
    for ch in range(c):
        for i in range(h):
            for j in range(w):  # PyTorch pixel_shuffle: channel (c, row, col)
                shuffle[0, ch // 4, i * b + (ch % 4) // b, j * b + ch % b] = IMG[0, ch, i, j]
    check("space_to_depth", dict(x=IMG, block_size=np.int32(2)), s2d)
    check("depth_to_space", dict(x=s2d.astype(np.float32), block_size=np.int32(2)), IMG)
    check("pixel_shuffle", dict(x=IMG, upscale_factor=np.int32(2)), shuffle)
    check("pixel_unshuffle", dict(x=shuffle.astype(np.float32), downscale_factor=np.int32(2)), IMG)
    batch = np.stack([IMG[:, :, i::2, j::2] for i in range(2) for j in range(2)]).reshape(4, c, h // 2, w // 2)
    check("space_to_batch", dict(x=IMG, block_shape=np.array([2, 2], np.int32), paddings=np.zeros(4, np.int32)), batch)
    check("batch_to_space", dict(x=batch.astype(np.float32), block_shape=np.array([2, 2], np.int32),
                                 crops=np.array([0, 1, 1, 0], np.int32)), IMG[:, :, :-1, 1:])


def test_moves_against_slicing():
    check("crop", dict(x=IMG, crop_height=np.array([1, 0], np.int32), crop_width=np.array([2, 1], np.int32)), IMG[..., 1:, 2:-1])
    check("sliding_windows", dict(x=X, axis=np.int32(2), size=np.int32(2), stride=np.int32(2)),
          np.stack([X[:, :, 0:2], X[:, :, 2:4]], axis=2))
    check("reshape_like", dict(x=X, ref_tensors=(IMG[:, :6], X), begins=np.array([0, 2], np.int32), ends=np.array([2, 0], np.int32),
                               end_masks=np.array([False, True])), X.reshape(1, 6, 4))
    x = X.astype(np.float64).copy()
    for b, n in enumerate([2, 3]):
        x[b, :, :n] = x[b, :, :n][:, ::-1]
    check("reverse_sequence", dict(x=X, lengths=np.array([2, 3], np.int32), seq_axis=np.int32(2), batch_axis=np.int32(0)), x)
    check("upsample_nearest_neighbor", dict(x=IMG, scale_factor_height=np.int32(2), scale_factor_width=np.int32(3)),
          IMG.repeat(2, axis=2).repeat(3, axis=3))


def test_exclusive_cumsum_against_formula():
    """(pymil's value_inference of exclusive cumsum raises a TypeError, so a formula.)"""
    x = X.astype(np.float64)
    check("cumsum", dict(x=X, axis=np.int32(2), exclusive=True, reverse=True), np.flip(np.cumsum(np.flip(x, 2), 2), 2) - x)
    check("cumsum", dict(x=X, axis=np.int32(0), exclusive=True), np.concatenate([np.zeros((1, 3, 4)), x[:1]]))


def test_dequantize_against_formula():
    q = np.array([[0, 100, 255], [7, 128, 30]], np.int32)
    check("dequantize", dict(input=q, scale=np.array([0.5, 0.25], np.float32), zero_point=np.array([1, 128], np.int32), axis=np.int32(0)),
          (q - np.array([[1], [128]])) * np.array([[0.5], [0.25]]))


def naive_conv_transpose_1d(x, w, stride, dilation):
    n, cin, length = x.shape
    out = np.zeros((n, w.shape[1], (length - 1) * stride + (w.shape[2] - 1) * dilation + 1))
    for c in range(cin):
        for o in range(w.shape[1]):
            for i in range(length):
                for k in range(w.shape[2]):
                    out[:, o, i * stride + k * dilation] += x[:, c, i] * w[c, o, k]
    return out


def test_conv_transpose_against_loops():
    x = rng.standard_normal((2, 3, 5)).astype(np.float32)
    w = rng.standard_normal((3, 4, 3)).astype(np.float32)
    full = naive_conv_transpose_1d(x.astype(np.float64), w, 2, 1)
    kw = dict(x=x, weight=w, strides=np.array([2], np.int32), pad_type="custom", pad=np.array([1, 2], np.int32))
    check("conv_transpose", kw, full[:, :, 1:-2])
    check("conv_transpose", dict(x=x, weight=w, strides=np.array([2], np.int32), pad_type="same"), full[:, :, 0:10])


def test_list_ops_in_a_chain():
    """make_list -> list_write x2 -> list_read / list_gather / list_length, through the Evaluator (a list value
    lives in the environment like a tensor)."""
    function = MIL_pb2.Function()
    block = function.block_specializations["CoreML7"]
    function.opset = "CoreML7"

    def op(op_type, out_name, **inputs):
        """inputs: a value name as ("name",), anything else becomes a const."""
        bindings = {}
        for param, value in inputs.items():
            if isinstance(value, tuple):
                bindings[param] = value[0]
                continue
            const, bindings[param] = OpEmitter([]).const(f"{out_name}_{param}", np.asarray(value), literal_dtype(value))
            block.operations.append(const)
        o = block.operations.add(type=op_type)
        for param, name in bindings.items():
            o.inputs[param].arguments.add().name = name
        o.outputs.add(name=out_name)

    op("make_list", "l0", init_length=np.int32(1), elem_shape=np.array([2], np.int32), dtype="fp32")
    op("list_write", "l1", ls=("l0",), index=np.int32(1), value=np.array([1.0, 2.0], np.float32))
    op("list_scatter", "l2", ls=("l1",), indices=np.array([3], np.int32), value=np.array([[5.0, 6.0]], np.float32))
    op("list_read", "r", ls=("l2",), index=np.int32(1))
    op("list_gather", "g", ls=("l2",), indices=np.array([3, 0], np.int32))
    op("list_length", "n", ls=("l2",))
    result = Evaluator(SpecGraph("f", function), blobs=None).evaluate(["r", "g", "n", "l0"], {})
    np.testing.assert_array_equal(result["r"], [1.0, 2.0])
    np.testing.assert_array_equal(result["g"], [[5.0, 6.0], [0.0, 0.0]])
    assert int(result["n"]) == 4 and len(result["l0"]) == 1  # writes made new lists
    assert math.isclose(float(np.sum(result["l0"][0])), 0.0)
