"""The dtype rules of the target opset for the ops the rewrite emits (README, "Core ML facts mlopt relies on").

mul/concat/slice need one dtype throughout in every opset. layer_norm's epsilon must have x's dtype on
iOS15/16 (CoreML5/6); from iOS17 (CoreML7) it may be fp32 under fp16 x, which keeps a 1e-6 epsilon exact
instead of rounding it to a subnormal fp16.
"""

import numpy as np

from ..graph.dtypes import FLOAT16, FLOAT32

FP32_PARAMS_UNDER_FP16 = {"CoreML7", "CoreML8", "CoreML9"}


def epsilon_dtype(opset, x_dtype, epsilon):
    """The dtype layer_norm's epsilon constant gets: x's own, or fp32 where allowed and fp16 would change it."""
    if x_dtype != FLOAT16 or opset not in FP32_PARAMS_UNDER_FP16:
        return x_dtype
    exact_in_fp16 = float(np.float16(epsilon)) == float(np.float32(epsilon))
    return FLOAT16 if exact_in_fp16 else FLOAT32
