"""One fused pymil op per rule, `mlopt_<rule name>`, living between the fusion and the lowering pass.

    mlopt_<rule>(x, <operands>?, axes, <params>)        = the rule's float64 `reference`, in x's dtype

Its inputs are x, the rule's optional tensor operands and its literal parameters (rules/base.py), each typed as
the rule declares (`param_types`): FLOAT in x's dtype, EPSILON in x's dtype on the iOS15 opset and fp16 or fp32
from iOS17 (layer_norm's epsilon rule), INT int32. Its output has x's dtype and the shape the rule declares
(`output_shape`; by default x broadcast with its operands). It only ever lives inside the pass pipeline: the
rule's lowering pass replaces it before serialisation (Core ML has no such op). Rules are registered when a
pipeline is built for them (`register`), not at import: a rule set is read when used.
"""

import numpy as np

from coremltools.converters.mil.mil import Operation, types
from coremltools.converters.mil.mil.input_type import InputSpec, TensorInputType
from coremltools.converters.mil.mil.ops.defs._utils import broadcast_shapes
from coremltools.converters.mil.mil.ops.registry import SSAOpRegistry
from coremltools.converters.mil._deployment_compatibility import AvailableTarget as target

from ..rules.base import EPSILON, INT

_REGISTERED = {}  # rule name -> (the rule object its op classes serve, {opset: class})


def fused_op_type(rule):
    return f"mlopt_{rule.name}"


def param_value(rule, name, var):
    """A fused op's literal parameter as a Python number of the rule's declared type."""
    return int(var.val) if rule.param_type(name) == INT else float(var.val)


class _Fused(Operation):
    rule = None  # set per registered class
    type_domains = {"T": (types.fp16, types.fp32), "U": (types.fp16, types.fp32)}

    def _operands(self):
        return {name: getattr(self, name) for name in self.rule.operands if getattr(self, name) is not None}

    def _axes(self):
        return tuple(int(a) for a in np.asarray(self.axes.val).reshape(-1))

    def _params(self):
        return {name: param_value(self.rule, name, getattr(self, name)) for name in self.rule.params}

    def type_inference(self):
        operands = self._operands()
        shape = self.rule.output_shape(tuple(self.x.shape), {n: tuple(v.shape) for n, v in operands.items()},
                                       self._axes(), self._params())
        if shape is None:
            shape = self.x.shape
            for var in operands.values():
                shape = broadcast_shapes(shape, var.shape)
        return types.tensor(self.x.dtype, tuple(shape))

    def value_inference(self):
        operands = {name: var.val for name, var in self._operands().items()}
        if self.rule.reference is None or self.x.val is None or any(v is None for v in operands.values()):
            return None
        out = self.rule.reference(self.x.val, operands, self._axes(), self._params())
        return out.astype(types.nptype_from_builtin(self.x.dtype))


def _param_domain(rule, name, opset):
    kind = rule.param_type(name)
    if kind == INT:
        return types.int32
    return "U" if kind == EPSILON and opset == target.iOS17 else "T"


def _input_spec(rule, opset):
    spec = {"x": TensorInputType(type_domain="T")}
    spec.update({name: TensorInputType(optional=True, type_domain="T") for name in rule.operands})
    spec["axes"] = TensorInputType(const=True, type_domain=types.int32)
    spec.update({name: TensorInputType(const=True, type_domain=_param_domain(rule, name, opset)) for name in rule.params})
    return InputSpec(**spec)


def register(rule):
    """Register `rule`'s fused op (iOS15 and iOS17 opsets). A rule object of a name registered before takes
    over its classes (coremltools' registry cannot register an opset's op class twice)."""
    known = _REGISTERED.get(rule.name)
    if known is not None:
        if known[0] is not rule:
            for opset, cls in known[1].items():
                cls.rule, cls.input_spec = rule, _input_spec(rule, opset)
                cls.__doc__ = f"{rule.title} as one op: {rule.description}"
            _REGISTERED[rule.name] = (rule, known[1])
        return
    classes = {}
    for opset in (target.iOS15, target.iOS17):
        cls = type(fused_op_type(rule), (_Fused,), {"__doc__": f"{rule.title} as one op: {rule.description}",
                                                       "rule": rule, "input_spec": _input_spec(rule, opset)})
        classes[opset] = SSAOpRegistry.register_op(_cls=cls, opset_version=opset, allow_override=True)
    _REGISTERED[rule.name] = (rule, classes)
