"""What the norm rules (rms_norm, layer_norm, instance_norm) share and no generic module may know: the inputs their proofs feed,
the words their reports use, and the norms a model may hold that are none of theirs."""

from .base import EPSILON

# magnitudes of the row self-check's inputs: small, typical, and large enough to overflow x^2 in fp16 (300^2 > 65504)
MAGNITUDES = (1e-2, 1.0, 300.0)
AXES_NAME = "normalised"  # how messages call the axes a norm mixes over
PARAM_TYPES = {"epsilon": EPSILON}  # layer_norm's epsilon follows the opset's dtype rule (rewrites/opset_rules.py)

# norms a model may hold that are not chains these rules rewrite, named when a function has no candidate
LOOKALIKES = {
    "layer_norm": "a native LayerNorm already",
    "reduce_l2_norm": "an L2 norm (x / ||x||, e.g. F.normalize or ScaleNorm), not a root mean square",
    "l2_norm": "an L2 norm op, not a root mean square",
    "batch_norm": "a BatchNorm, not an RMSNorm",
    "instance_norm": "a native InstanceNorm already",
}


class NormFamily:
    """Mixin for a norm rule: the declarations above."""

    magnitudes = MAGNITUDES
    axes_name = AXES_NAME
    param_types = PARAM_TYPES
    lookalikes = LOOKALIKES
