"""The interpreter, op by op, against coremltools' own value_inference (pymil), an independent implementation.

Each case builds the op with the MIL builder on constant inputs (pymil computes its value), builds the same op as
a spec proto, runs it in mlopt's interpreter and compares. Ops pymil cannot evaluate are checked against a
formula or a naive loop written here.
"""

import numpy as np
import pytest

import coremltools as ct
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import Function, types

from mlopt.graph import SpecGraph
from mlopt.graph.dtypes import BOOL, FLOAT16, FLOAT32, INT32, STRING
from mlopt.numerics.interpreter import Evaluator, UnsupportedOp
from mlopt.package.proto import MIL_pb2
from mlopt.graph.emit import OpEmitter, tensor_type

rng = np.random.default_rng(0)
A = rng.standard_normal((2, 3, 4)).astype(np.float32)
B = rng.standard_normal((2, 3, 4)).astype(np.float32)
POS = np.abs(A) + 0.1
A16, B16 = A.astype(np.float16), B.astype(np.float16)
I = np.array([2, 0, 1], np.int32)

CASES = {
    "add": dict(x=A, y=B), "sub": dict(x=A, y=B[:, :1]), "mul": dict(x=A16, y=B16), "real_div": dict(x=A, y=POS),
    "pow": dict(x=POS, y=B), "maximum": dict(x=A, y=B), "minimum": dict(x=A16, y=B16),
    "equal": dict(x=A, y=A * (B > 0)), "not_equal": dict(x=A, y=A * (B > 0)), "greater": dict(x=A, y=B),
    "greater_equal": dict(x=A, y=B), "less": dict(x=A, y=B), "less_equal": dict(x=A, y=B),
    "logical_and": dict(x=A > 0, y=B > 0), "logical_or": dict(x=A > 0, y=B > 0), "logical_xor": dict(x=A > 0, y=B > 0),
    "logical_not": dict(x=A > 0),
    "sqrt": dict(x=POS), "rsqrt": dict(x=POS, epsilon=1e-3), "inverse": dict(x=POS, epsilon=1e-2), "square": dict(x=A16),
    "abs": dict(x=A), "exp": dict(x=A), "log": dict(x=POS, epsilon=1e-3), "tanh": dict(x=A), "sigmoid": dict(x=A),
    "gelu_exact": dict(x=A, mode="EXACT"), "gelu_tanh": dict(x=A, mode="TANH_APPROXIMATION"),
    "gelu_sigmoid": dict(x=A, mode="SIGMOID_APPROXIMATION"), "relu": dict(x=A), "softmax": dict(x=A, axis=1),
    "clip": dict(x=A, alpha=np.float32(-0.5), beta=np.float32(0.5)), "select": dict(cond=A > 0, a=A, b=B),
    "erf": dict(x=A), "floor": dict(x=A), "ceil": dict(x=A), "sign": dict(x=A), "leaky_relu": dict(x=A, alpha=np.float32(0.1)),
    "reduce_mean": dict(x=A, axes=[1], keep_dims=True), "reduce_mean_fp16": dict(x=A16, axes=[-1], keep_dims=False),
    "reduce_sum": dict(x=A, axes=[0, 2]), "reduce_max": dict(x=A, axes=[2], keep_dims=True), "reduce_min": dict(x=A),
    "reduce_prod": dict(x=A, axes=[1]), "reduce_l2_norm": dict(x=A, axes=[2]), "reduce_argmax": dict(x=A, axis=1),
    "layer_norm": dict(x=A, axes=[2], gamma=B[0, 0], beta=A[0, 0], epsilon=np.float32(1e-5)),
    "layer_norm_mid_axis": dict(x=A, axes=[1], gamma=B[0, :, 0], epsilon=np.float32(1e-3)),
    "layer_norm_fp16": dict(x=A16, axes=[2]),
    "linear": dict(x=A, weight=rng.standard_normal((5, 4)).astype(np.float32), bias=B[0, 0, :].repeat(2)[:5]),
    "matmul": dict(x=A, y=B, transpose_y=True), "matmul_tx": dict(x=A, y=B, transpose_x=True),
    "einsum": dict(values=(A.reshape(1, 2, 3, 4), rng.standard_normal((1, 4, 3, 5)).astype(np.float32)), equation="nchw,nwhu->nchu"),
    "concat": dict(values=(A, B), axis=1),
    "split": dict(x=A, num_splits=2, axis=2), "split_sizes": dict(x=A, split_sizes=[1, 2], axis=1),
    "slice_by_index": dict(x=A, begin=[0, 1, 0], end=[2, 3, 4], stride=[1, 1, 2]),
    "slice_by_index_masks": dict(x=A, begin=[1, 0, 3], end=[0, 2, 0], begin_mask=[False, True, False], end_mask=[True, False, True], squeeze_mask=[True, False, False]),
    "slice_by_size": dict(x=A, begin=[0, 1, 0], size=[1, -1, 2]),
    "reshape": dict(x=A, shape=[6, -1]), "transpose": dict(x=A, perm=[2, 0, 1]), "expand_dims": dict(x=A, axes=[0, -1]),
    "squeeze": dict(x=A[:1, :, :1], axes=[0]), "squeeze_all": dict(x=A[:1, :, :1]), "tile": dict(x=A, reps=[1, 2, 1]),
    "gather": dict(x=A, indices=I, axis=1), "gather_neg": dict(x=A, indices=np.array([-1, 0], np.int32), axis=2),
    "gather_along_axis": dict(x=A, indices=np.tile(I[None, :, None], (2, 1, 4)), axis=1),
    "fill": dict(shape=np.array([2, 3], np.int32), value=np.float32(1.5)),
    "range_1d": dict(end=np.float32(5.0), start=np.float32(0.5), step=np.float32(1.5)),
    "band_part": dict(x=A, lower=1, upper=0), "cast_fp16": dict(x=A, dtype="fp16"), "cast_int32": dict(x=A * 3, dtype="int32"),
}


def pymil_value(op_type, kwargs, opset=ct.target.iOS17):
    with Function({}, opset_version=opset):
        out = getattr(mb, op_type)(**kwargs)
    outs = list(out) if isinstance(out, (list, tuple)) else [out]
    return [(np.asarray(v.val), v.dtype) for v in outs]


DTYPES = {types.fp16: FLOAT16, types.fp32: FLOAT32, types.int32: INT32, types.bool: BOOL}


def literal_dtype(value):
    value = np.asarray(value)
    if value.dtype.kind in "US":
        return STRING
    return {np.float16: FLOAT16, np.float32: FLOAT32, np.float64: FLOAT32, np.bool_: BOOL}.get(value.dtype.type, INT32)


def run_interpreter(op_type, kwargs, outputs):
    """Build `op_type(**kwargs)` as a spec function of const ops and evaluate it in mlopt's interpreter."""
    function = MIL_pb2.Function()
    function.opset = "CoreML7"
    block = function.block_specializations["CoreML7"]
    emit = OpEmitter([])
    inputs = {}
    for param, value in kwargs.items():
        values = value if isinstance(value, tuple) else [value]
        names = []
        for v in values:
            const, name = emit.const(param, np.asarray(v), literal_dtype(v))
            block.operations.append(const)
            names.append(name)
        inputs[param] = names if isinstance(value, tuple) else names[0]
    op = MIL_pb2.Operation(type=op_type)
    for param, names in inputs.items():
        for n in names if isinstance(names, list) else [names]:
            op.inputs[param].arguments.add().name = n
    for k, (value, dtype) in enumerate(outputs):
        out = op.outputs.add(name=f"out{k}")
        out.type.CopyFrom(tensor_type(DTYPES[dtype], value.shape))
    block.operations.append(op)
    block.outputs.extend(o.name for o in op.outputs)
    view = SpecGraph("f", function)
    result = Evaluator(view, blobs=None).evaluate(list(block.outputs), {})
    return [result[o] for o in block.outputs]


@pytest.mark.parametrize("case", sorted(CASES))
def test_op_matches_value_inference(case):
    kwargs = CASES[case]
    op_type = case if case in ("reduce_mean",) else case.split("_fp16")[0]
    op_type = {"gelu_exact": "gelu", "gelu_tanh": "gelu", "gelu_sigmoid": "gelu", "matmul_tx": "matmul",
               "split_sizes": "split", "slice_by_index_masks": "slice_by_index", "squeeze_all": "squeeze", "gather_neg": "gather",
               "cast_fp16": "cast", "cast_int32": "cast", "layer_norm_mid_axis": "layer_norm"}.get(case, op_type)
    assert_matches_value_inference(op_type, kwargs, case)


def assert_matches_value_inference(op_type, kwargs, case, opset=None):
    """The interpreter's outputs equal coremltools' value_inference for the op (exact for integers; fp16 and fp32
    tolerances for floats)."""
    expected = pymil_value(op_type, kwargs) if opset is None else pymil_value(op_type, kwargs, opset)
    assert all(v.dtype != object for v, _ in expected), f"pymil gave no value for {case}"
    got = run_interpreter(op_type, kwargs, expected)
    for (want, dtype), have in zip(expected, got):
        assert have.shape == want.shape
        if want.dtype.kind in "biu":
            np.testing.assert_array_equal(have, want)
        else:
            tol = 2e-3 if dtype == types.fp16 else 1e-5
            np.testing.assert_allclose(have.astype(np.float64), want.astype(np.float64), rtol=tol, atol=tol)


def test_silu_against_formula():
    (got,) = run_interpreter("silu", dict(x=A), [(A, types.fp32)])
    x = A.astype(np.float64)
    np.testing.assert_allclose(got, x / (1 + np.exp(-x)), rtol=1e-6)


def naive_conv(x, w, b, stride, pad, dilation, groups):
    """Direct 1-D convolution by four loops: the definition, written independently of the interpreter's."""
    x = np.pad(x, [(0, 0), (0, 0), pad])
    n, cin, length = x.shape
    cout, cin_g, k = w.shape
    out_len = (length - (k - 1) * dilation - 1) // stride + 1
    out = np.zeros((n, cout, out_len))
    for o in range(cout):
        g = o // (cout // groups)
        for t in range(out_len):
            for c in range(cin_g):
                for j in range(k):
                    out[:, o, t] += w[o, c, j] * x[:, g * cin_g + c, t * stride + j * dilation]
        out[:, o] += b[o]
    return out


@pytest.mark.parametrize(
    "pad_type, pad, stride, dilation, groups",
    [("valid", None, 1, 1, 1), ("custom", [2, 1], 2, 1, 2), ("same", None, 1, 2, 1), ("same_lower", None, 2, 1, 4)],
)
def test_conv1d_against_naive_loops(pad_type, pad, stride, dilation, groups):
    x = rng.standard_normal((2, 4, 9)).astype(np.float32)
    w = rng.standard_normal((8, 4 // groups, 3)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    kwargs = dict(x=x, weight=w, bias=b, strides=np.array([stride], np.int32), pad_type=pad_type,
                  dilations=np.array([dilation], np.int32), groups=np.int32(groups))
    if pad is not None:
        kwargs["pad"] = np.array(pad, np.int32)
    if pad_type in ("same", "same_lower"):
        out_len = -(-9 // stride)
        total = max((out_len - 1) * stride + 2 * dilation + 1 - 9, 0)
        pad = [total // 2, total - total // 2] if pad_type == "same" else [total - total // 2, total // 2]
    expected = naive_conv(x.astype(np.float64), w, b, stride, pad or [0, 0], dilation, groups)
    (got,) = run_interpreter("conv", kwargs, [(expected, types.fp32)])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_conv2d_equals_1d_on_a_height_1_image():
    x = rng.standard_normal((1, 4, 1, 7)).astype(np.float32)
    w = rng.standard_normal((3, 4, 1, 3)).astype(np.float32)
    expected = naive_conv(x[:, :, 0].astype(np.float64), w[:, :, 0], np.zeros(3), 1, [1, 1], 1, 1)[:, :, None, :]
    (got,) = run_interpreter("conv", dict(x=x, weight=w, pad_type="same"), [(expected, types.fp32)])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_unknown_op_is_named():
    with pytest.raises(UnsupportedOp, match="no implementation of MIL op 'frobnicate'"):
        run_interpreter("frobnicate", dict(x=A), [(A, types.fp32)])


def test_fp16_elementwise_rounds_like_fp16_and_reductions_accumulate_in_fp32():
    big = np.full((1, 4096), 1.0, np.float16)
    (total,) = run_interpreter("reduce_sum", dict(x=big, axes=[1]), [(np.zeros(1, np.float16), types.fp16)])
    assert total[0] == 4096  # an fp16 running sum would stall at 2048
    (square,) = run_interpreter("square", dict(x=np.array([300.0], np.float16)), [(np.zeros(1, np.float16), types.fp16)])
    assert np.isinf(square[0])  # 90000 overflows fp16


def test_concat_interleave_as_documented():
    """coremltools' concat docstring example. (pymil's value_inference ignores `interleave` and concatenates;
    Core ML follows the documented semantics, so the interpreter does too.)"""
    in1 = np.array([[1, 2], [3, 4], [5, 6]], np.float32)
    in2 = np.array([[7, 8], [9, 10], [11, 12]], np.float32)
    expected = np.array([[1, 2], [7, 8], [3, 4], [9, 10], [5, 6], [11, 12]], np.float32)
    (got,) = run_interpreter("concat", dict(values=(in1, in2), axis=np.int32(0), interleave=True), [(expected, types.fp32)])
    np.testing.assert_array_equal(got, expected)


def test_an_op_without_a_required_input_is_named():
    """A malformed program (a linear without its weight): the error names the input, not Python's wording."""
    from mlopt.numerics.interpreter import InterpreterError, _required
    from mlopt.numerics.ops import IMPLEMENTATIONS

    assert "weight" in _required(IMPLEMENTATIONS["linear"])
    emit = OpEmitter([])
    op, out = emit.op("linear", {"x": "x"}, tensor_type(FLOAT32, [2, 3]), output_name="y")
    function = MIL_pb2.Function()
    function.opset = "CoreML7"
    inp = function.inputs.add()
    inp.name = "x"
    inp.type.CopyFrom(tensor_type(FLOAT32, [2, 3]))
    block = function.block_specializations["CoreML7"]
    block.operations.append(op)
    block.outputs.append("y")
    with pytest.raises(InterpreterError, match=r"^op 'linear' \(linear\) has no input 'weight', which it requires$"):
        Evaluator(SpecGraph("f", function), None).evaluate(["y"], {"x": np.ones((2, 3), np.float32)})
