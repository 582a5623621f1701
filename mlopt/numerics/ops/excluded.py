"""MIL ops (iOS15-iOS18 opsets of coremltools 9) the interpreter deliberately does not implement, with why.

`mlopt verify` on a model using one fails with `UnsupportedOp` naming it; tests/test_interpreter_coverage.py
keeps this list and IMPLEMENTATIONS together covering every op coremltools can write.
"""

_RANDOM = "random op: its samples cannot be reproduced without Core ML's generator, so outputs are not comparable"
_RESAMPLE = "image resampling with Core ML-specific coordinate/sampling modes, not verified against a reference"
_RECURRENT = "fused recurrent layer: gate order, activations and state outputs are Core ML-specific and untested"

EXCLUDED = {
    "random_bernoulli": _RANDOM,
    "random_categorical": _RANDOM,
    "random_normal": _RANDOM,
    "random_uniform": _RANDOM,
    "affine": _RESAMPLE,
    "resample": _RESAMPLE,
    "crop_resize": _RESAMPLE,
    "resize": _RESAMPLE,
    "resize_bilinear": _RESAMPLE,
    "resize_nearest_neighbor": _RESAMPLE,
    "upsample_bilinear": _RESAMPLE + " (align_corners / half-pixel variants)",
    "lstm": _RECURRENT,
    "gru": _RECURRENT,
    "rnn": _RECURRENT,
    "classify": "classifier output op: produces a string/int64 label dictionary, which is not a tensor to compare",
    "non_maximum_suppression": "box suppression: tie-breaking and output padding are Core ML-specific and untested",
    "conv_quantized": (
        "conv with weights quantized by quantization_type/nbits/quant_scale/quant_bias: coremltools emits it for the "
        "NeuralNetwork backend only (ML programs use constexpr weights), so it never reaches a verified package"
    ),
    "_const_symbolic": "coremltools-internal placeholder for symbolic shapes: never serialized to a model",
}
