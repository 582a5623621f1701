"""The dtype rules of the target opset for the ops the rewrite emits (docs/core-ml-format.md).

mul/concat/slice need one dtype throughout in every opset. layer_norm's epsilon must have x's dtype on
iOS15/16 (CoreML5/6); from iOS17 (CoreML7) it may be fp32 under fp16 x, which keeps a 1e-6 epsilon exact
instead of rounding it to a subnormal fp16 - but gamma, beta and epsilon share one type there (the iOS17
layer_norm's domain U), so with a gamma or beta in x's dtype the epsilon takes x's dtype too.
"""

import numpy as np

from ..graph.dtypes import FLOAT16, FLOAT32

FP32_PARAMS_UNDER_FP16 = {"CoreML7", "CoreML8", "CoreML9"}


def epsilon_dtype(opset, x_dtype, epsilon, with_params=False):
    """The dtype layer_norm's epsilon constant gets: x's own, or fp32 where allowed and fp16 would change it
    (not with gamma/beta, which are x's dtype and share epsilon's type)."""
    if x_dtype != FLOAT16 or opset not in FP32_PARAMS_UNDER_FP16 or with_params:
        return x_dtype
    exact_in_fp16 = float(np.float16(epsilon)) == float(np.float32(epsilon))
    return FLOAT16 if exact_in_fp16 else FLOAT32


FOLD_ROUNDING = 1e-2  # how far an epsilon may round to share gamma/beta's fp16 type: far below any effect


def folds_params(opset, x_dtype, epsilon):
    """Whether layer_norm can take gamma/beta in x's dtype and still hold `epsilon` well: they share its type from
    iOS17, so under fp16 x the epsilon becomes fp16 too - fine for 1e-5 (0.14% off), not for 1e-7 (19%) or
    1e-12 (0). Before iOS17 the epsilon is x's dtype anyway."""
    if epsilon_dtype(opset, x_dtype, epsilon) == x_dtype:
        return True
    rounded = float(np.float16(epsilon))
    return rounded > 0 and abs(rounded - epsilon) <= FOLD_ROUNDING * epsilon
