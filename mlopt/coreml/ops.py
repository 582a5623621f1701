"""`ane_rms_norm(x, gamma?, epsilon, axes)`: RMSNorm as one pymil op, between the fusion and the lowering pass.

    out = x / sqrt(mean(x^2, axes) + epsilon) [* gamma]

Registered for the iOS15 opset (epsilon in x's dtype, as layer_norm wants there) and the iOS17 opset (epsilon may
be fp32 under fp16 x). It only ever lives inside the pass pipeline: `mlopt::lower_ane_rms_norm_to_layer_norm`
replaces it before serialisation (Core ML has no such op).
"""

import numpy as np

from coremltools.converters.mil.mil import Operation, types
from coremltools.converters.mil.mil.input_type import InputSpec, TensorInputType
from coremltools.converters.mil.mil.ops.defs._utils import broadcast_shapes
from coremltools.converters.mil.mil.ops.registry import SSAOpRegistry
from coremltools.converters.mil._deployment_compatibility import AvailableTarget as target

from ..numerics.selfcheck import rms_norm_reference


class _AneRmsNorm(Operation):
    type_domains = {"T": (types.fp16, types.fp32), "U": (types.fp16, types.fp32)}

    def type_inference(self):
        shape = self.x.shape if self.gamma is None else broadcast_shapes(self.x.shape, self.gamma.shape)
        return types.tensor(self.x.dtype, shape)

    def value_inference(self):
        gamma = None if self.gamma is None else self.gamma.val
        if self.x.val is None or (self.gamma is not None and gamma is None):
            return None
        axes = tuple(int(a) for a in np.asarray(self.axes.val).reshape(-1))
        out = rms_norm_reference(self.x.val, axes, float(self.epsilon.val), gamma)
        return out.astype(types.nptype_from_builtin(self.x.dtype))


def _register(opset, epsilon_domain):
    cls = type(
        "ane_rms_norm",
        (_AneRmsNorm,),
        {
            "__doc__": __doc__,
            "input_spec": InputSpec(
                x=TensorInputType(type_domain="T"),
                gamma=TensorInputType(optional=True, type_domain="T"),
                epsilon=TensorInputType(const=True, type_domain=epsilon_domain),
                axes=TensorInputType(const=True, type_domain=types.int32),
            ),
        },
    )
    return SSAOpRegistry.register_op(_cls=cls, opset_version=opset, allow_override=True)


ane_rms_norm_iOS15 = _register(target.iOS15, "T")
ane_rms_norm_iOS17 = _register(target.iOS17, "U")
