"""Matrix products and convolution, accumulated in fp32 for fp16 inputs."""

import numpy as np

from .registry import accumulate, implementation, scalar


@implementation("linear")
def linear(x, weight, bias=None, **_):
    out = accumulate(x) @ accumulate(weight).T
    return out if bias is None else out + accumulate(bias)


@implementation("matmul")
def matmul(x, y, transpose_x=False, transpose_y=False, **_):
    a, b = accumulate(x), accumulate(y)
    if bool(scalar(transpose_x)) and a.ndim > 1:
        a = np.swapaxes(a, -1, -2)
    if bool(scalar(transpose_y)) and b.ndim > 1:
        b = np.swapaxes(b, -1, -2)
    return np.matmul(a, b)


@implementation("einsum")
def einsum(values, equation, **_):
    return np.einsum(str(scalar(equation)), *[accumulate(v) for v in values])


def _same_padding(size, kernel, stride, dilation, lower):
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    small, big = total // 2, total - total // 2
    return (big, small) if lower else (small, big)


@implementation("conv")
def conv(x, weight, bias=None, strides=None, pad_type="valid", pad=None, dilations=None, groups=1, **_):
    """N-d convolution (1-D and 2-D in practice): x (N, C_in, *spatial), weight (C_out, C_in/groups, *kernel)."""
    v, w = accumulate(x), accumulate(weight)
    spatial = v.ndim - 2
    strides = [1] * spatial if strides is None else [int(s) for s in np.asarray(strides).reshape(-1)]
    dilations = [1] * spatial if dilations is None else [int(d) for d in np.asarray(dilations).reshape(-1)]
    pad_type = str(scalar(pad_type))
    kernel = w.shape[2:]
    if pad_type == "custom":
        p = [int(q) for q in np.asarray(pad).reshape(-1)]
        pads = [(p[2 * i], p[2 * i + 1]) for i in range(spatial)]
    elif pad_type in ("same", "same_lower"):
        pads = [_same_padding(v.shape[2 + i], kernel[i], strides[i], dilations[i], pad_type == "same_lower") for i in range(spatial)]
    else:
        pads = [(0, 0)] * spatial
    v = np.pad(v, [(0, 0), (0, 0)] + pads)
    groups = int(scalar(groups))
    n, c_in = v.shape[:2]
    c_out = w.shape[0]
    out_size = [(v.shape[2 + i] - (kernel[i] - 1) * dilations[i] - 1) // strides[i] + 1 for i in range(spatial)]
    out = np.zeros((n, c_out, *out_size), v.dtype)
    cin_g, cout_g = c_in // groups, c_out // groups
    for k in np.ndindex(*kernel):  # sum over kernel taps: out += w[..., k] . x[shifted window]
        window = tuple(
            slice(k[i] * dilations[i], k[i] * dilations[i] + (out_size[i] - 1) * strides[i] + 1, strides[i]) for i in range(spatial)
        )
        patch = v[(slice(None), slice(None)) + window]
        for g in range(groups):
            xg = patch[:, g * cin_g : (g + 1) * cin_g]
            wg = w[(slice(g * cout_g, (g + 1) * cout_g), slice(None)) + k]
            out[:, g * cout_g : (g + 1) * cout_g] += np.einsum("oc,nc...->no...", wg, xg)
    if bias is not None:
        out += accumulate(bias).reshape((1, c_out) + (1,) * spatial)
    return out


@implementation("conv_transpose")
def conv_transpose(x, weight, bias=None, pad=None, output_shape=None, pad_type="valid", strides=None, dilations=None, groups=1, **_):
    """N-d transposed convolution: x (N, C_in, *spatial), weight (C_in, C_out/groups, *kernel). Each input element
    adds weight * x at i*stride + k*dilation of the full output, which is then cropped by the padding (`same`:
    to spatial*stride) or to `output_shape` (extra positions past the full output are zero before the bias)."""
    v, w = accumulate(x), accumulate(weight)
    spatial = v.ndim - 2
    strides = [1] * spatial if strides is None else [int(s) for s in np.asarray(strides).reshape(-1)]
    dilations = [1] * spatial if dilations is None else [int(d) for d in np.asarray(dilations).reshape(-1)]
    groups = int(scalar(groups))
    n, c_in, sizes = v.shape[0], v.shape[1], v.shape[2:]
    kernel = w.shape[2:]
    cin_g, cout_g = c_in // groups, w.shape[1]
    full = [(sizes[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 for i in range(spatial)]
    out = np.zeros((n, cout_g * groups, *full), v.dtype)
    for k in np.ndindex(*kernel):
        window = tuple(slice(k[i] * dilations[i], k[i] * dilations[i] + (sizes[i] - 1) * strides[i] + 1, strides[i]) for i in range(spatial))
        for g in range(groups):
            wg = w[(slice(g * cin_g, (g + 1) * cin_g), slice(None)) + k]
            out[(slice(None), slice(g * cout_g, (g + 1) * cout_g)) + window] += np.einsum("co,nc...->no...", wg, v[:, g * cin_g : (g + 1) * cin_g])
    pad_type = str(scalar(pad_type))
    if pad_type == "custom":
        p = [int(q) for q in np.asarray(pad).reshape(-1)]
        pads = [(p[2 * i], p[2 * i + 1]) for i in range(spatial)]
    elif pad_type in ("same", "same_lower"):
        totals = [max(full[i] - sizes[i] * strides[i], 0) for i in range(spatial)]
        pads = [(t - t // 2, t // 2) if pad_type == "same_lower" else (t // 2, t - t // 2) for t in totals]
    else:
        pads = [(0, 0)] * spatial
    lengths = [full[i] - sum(pads[i]) for i in range(spatial)]
    if output_shape is not None:
        lengths = [int(s) for s in np.asarray(output_shape).reshape(-1)[-spatial:]]
    out = np.pad(out, [(0, 0), (0, 0)] + [(0, max(pads[i][0] + lengths[i] - full[i], 0)) for i in range(spatial)])
    out = out[(slice(None), slice(None)) + tuple(slice(pads[i][0], pads[i][0] + lengths[i]) for i in range(spatial))]
    if bias is not None:
        out = out + accumulate(bias).reshape((1, -1) + (1,) * spatial)
    return out
