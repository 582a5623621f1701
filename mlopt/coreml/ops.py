"""One fused pymil op per rule, `mlopt_<rule name>`, living between the fusion and the lowering pass.

    mlopt_rms_norm(x, gamma?, axes, epsilon)        = the rule's float64 `reference`, in x's dtype

Its inputs are x, the rule's optional tensor operands and its literal parameters (rules/base.py). Registered for
the iOS15 opset (float parameters in x's dtype, as layer_norm wants there) and the iOS17 opset (they may be fp32
under fp16 x). It only ever lives inside the pass pipeline: the rule's lowering pass replaces it before
serialisation (Core ML has no such op).
"""

import numpy as np

from coremltools.converters.mil.mil import Operation, types
from coremltools.converters.mil.mil.input_type import InputSpec, TensorInputType
from coremltools.converters.mil.mil.ops.defs._utils import broadcast_shapes
from coremltools.converters.mil.mil.ops.registry import SSAOpRegistry
from coremltools.converters.mil._deployment_compatibility import AvailableTarget as target

from ..rules import RULES


def fused_op_type(rule):
    return f"mlopt_{rule.name}"


class _Fused(Operation):
    rule = None  # set per registered class
    type_domains = {"T": (types.fp16, types.fp32), "U": (types.fp16, types.fp32)}

    def _operands(self):
        return {name: getattr(self, name) for name in self.rule.operands if getattr(self, name) is not None}

    def type_inference(self):
        shape = self.x.shape
        for var in self._operands().values():
            shape = broadcast_shapes(shape, var.shape)
        return types.tensor(self.x.dtype, shape)

    def value_inference(self):
        operands = {name: var.val for name, var in self._operands().items()}
        if self.x.val is None or any(v is None for v in operands.values()):
            return None
        axes = tuple(int(a) for a in np.asarray(self.axes.val).reshape(-1))
        params = {name: float(getattr(self, name).val) for name in self.rule.params}
        out = self.rule.reference(self.x.val, operands, axes, params)
        return out.astype(types.nptype_from_builtin(self.x.dtype))


def _register(rule, opset, param_domain):
    spec = {"x": TensorInputType(type_domain="T")}
    spec.update({name: TensorInputType(optional=True, type_domain="T") for name in rule.operands})
    spec["axes"] = TensorInputType(const=True, type_domain=types.int32)
    spec.update({name: TensorInputType(const=True, type_domain=param_domain) for name in rule.params})
    cls = type(fused_op_type(rule), (_Fused,), {"__doc__": f"{rule.title} as one op: {rule.description}",
                                                   "rule": rule, "input_spec": InputSpec(**spec)})
    return SSAOpRegistry.register_op(_cls=cls, opset_version=opset, allow_override=True)


for _rule in RULES:
    _register(_rule, target.iOS15, "T")
    _register(_rule, target.iOS17, "U")
