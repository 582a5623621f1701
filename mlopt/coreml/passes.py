"""coremltools graph passes, two per rule: `mlopt::fuse_<rule>` and `mlopt::lower_<rule>`.

The fusion runs the rule's matcher - the same code `mlopt optimize` runs on saved specs - over a pymil function
through PymilGraph, and replaces each matched chain by one fused op (ops.py). It runs before
`common::add_fp16_cast`, while chains are plain fp32, so precision selection sees one op. The lowering runs after
it, when dtypes are final: it hands the rule's `lower` an MbBuilder, so the replacement is the one written into
saved specs, with the opset's dtype rules (rewrites/opset_rules.py).

Both take the option `compute_units` (`PassPipeline.set_options(name, {"compute_units": "CPU_AND_NE"})`) and do
nothing unless the rule pays for it (rms_norm: CPU_AND_NE only). Set it on both (pipeline.py does): a fused op
left unlowered cannot be saved.
"""

import warnings

import numpy as np

from coremltools.converters.mil.mil import Builder as mb
from coremltools.converters.mil.mil.passes.graph_pass import AbstractGraphPass
from coremltools.converters.mil.mil.passes.pass_registry import register_pass

from ..compute_units import compute_units_name
from ..graph.dtypes import CAST_NAMES, NUMPY
from ..rewrites.opset_rules import epsilon_dtype
from ..rules import find_candidates
from ..rules.base import EPSILON, INT, Fused
from . import ops
from .mb_builder import MbBuilder
from .ops import fused_op_type, param_value
from .pymil_graph import DTYPES, PymilGraph


def fuse_pass_name(rule):
    return f"mlopt::fuse_{rule.name}"


def lower_pass_name(rule):
    return f"mlopt::lower_{rule.name}"


class _RulePass(AbstractGraphPass):
    rule = None  # set per registered class

    def __init__(self):
        self.compute_units = None  # set through PassPipeline.set_options

    def enabled(self):
        return self.compute_units is not None and self.rule.applies(compute_units_name(self.compute_units))


def _opset(function):
    """"CoreML7" etc. for a pymil function (its target's specification version minus one)."""
    return f"CoreML{function.opset_version.value - 1}"


def _blocks(block):
    yield block
    for op in list(block.operations):
        for nested in op.blocks:
            yield from _blocks(nested)


class _Fuse(_RulePass):
    """The rule's chains -> its fused op."""

    def apply(self, prog):
        if not self.enabled():
            return
        for name, function in prog.functions.items():
            graph = PymilGraph(name, function)
            for candidate in find_candidates(graph, rules=(self.rule,)):
                if candidate.match is None:
                    continue
                why = _not_fusable(candidate.match) or self._cannot_lower(graph, candidate.match, _opset(function))
                if why is None:
                    self._fuse(graph, candidate.match, _opset(function))
                else:
                    warnings.warn(f"mlopt::fuse_{self.rule.name}: the chain at '{candidate.anchor}' is left alone: its "
                                  f"replacement could not be built: {why}", UserWarning, stacklevel=2)

    def _cannot_lower(self, graph, match, opset):
        """Why the rule's `lower` cannot build this chain's replacement (LoweringFailed, any ValueError), or None:
        tried once on the chain as it stands, the trial ops removed again. A chain whose replacement cannot be
        built is left alone, as on saved specs; one that fails only once dtypes are final stops the lowering pass."""
        anchor = match.output_op
        block = anchor.enclosing_block
        before = {id(op) for op in block.operations}
        fused = Fused(x=graph.vars[match.x], axes=tuple(match.axes), params=dict(match.params), dtype=match.dtype,
                      operands={n: graph.vars[v] if v is not None else None for n, v in match.operands.items()})
        try:
            with block:
                self.rule.lower(MbBuilder(anchor, opset), fused)
            return None
        except ValueError as e:
            return str(e)
        finally:
            trial = [op for op in block.operations if id(op) not in before]
            if trial:
                block.remove_ops(trial)

    def _fuse(self, graph, match, opset):
        x, out = graph.vars[match.x], graph.vars[match.output]
        anchor = match.output_op
        block = anchor.enclosing_block
        with block:
            operands = {}
            for name, value in match.operands.items():
                if value is not None:
                    var = graph.vars[value]
                    if DTYPES.get(var.dtype) != match.dtype:
                        var = mb.cast(x=var, dtype=CAST_NAMES[match.dtype], before_op=anchor)
                    operands[name] = var
            params = {name: _typed_param(self.rule, name, v, opset, match.dtype) for name, v in match.params.items()}
            fused = getattr(mb, fused_op_type(self.rule))(
                x=x, axes=np.array(match.axes, np.int32), **operands, **params, before_op=anchor,
                name=f"{anchor.name}_{fused_op_type(self.rule)}",
            )
            if DTYPES.get(out.dtype) != match.dtype:
                fused = mb.cast(x=fused, dtype=CAST_NAMES[DTYPES[out.dtype]], before_op=anchor)
            block.replace_uses_of_var_after_op(anchor_op=anchor, old_var=out, new_var=fused)
        _remove_dead(graph, match.ops)


def _not_fusable(match):
    """Why a match is no fused op, or None: one fused op replaces one value and is judged there, so a match that
    replaces several values (`Match.sites`) or is judged at several (a mask every layer shares, judged at each
    softmax) is rewritten on the saved program (`mlopt optimize`), not at conversion time."""
    if match.sites or len(match.judged()) > 1:
        return (f"it is judged at {len(match.judged())} values (one fused op replaces and is judged at one); "
                f"run mlopt optimize on the saved model")
    return None


def _typed_param(rule, name, value, opset, dtype):
    """A literal parameter as the fused op takes it: int32, x's dtype, or the opset's epsilon dtype."""
    kind = rule.param_type(name)
    if kind == INT:
        return np.int32(value)
    return NUMPY[epsilon_dtype(opset, dtype, value) if kind == EPSILON else dtype](value)


def _remove_dead(graph, names):
    """Remove the chain's ops nothing uses any more (an intermediate used elsewhere keeps its ops)."""
    ops = sorted((op for op in graph.ops() if op.name in set(names)), key=graph.position, reverse=True)
    for op in ops:
        if all(not v.child_ops and not v.consuming_blocks for v in op.outputs):
            op.enclosing_block.remove_ops([op])


class _Lower(_RulePass):
    """The rule's fused op -> its replacement (rule.lower on an MbBuilder)."""

    def apply(self, prog):
        if not self.enabled():
            return
        op_type = fused_op_type(self.rule)
        for function in prog.functions.values():
            for block in _blocks(function):
                for op in [op for op in block.operations if op.op_type == op_type]:
                    self._lower(op, block, _opset(function))

    def _lower(self, op, block, opset):
        rule = self.rule
        fused = Fused(
            x=op.x,
            operands={name: getattr(op, name) for name in rule.operands},
            axes=tuple(int(a) for a in np.asarray(op.axes.val).reshape(-1)),
            params={name: param_value(rule, name, getattr(op, name)) if rule.param_type(name) == INT else
                    _exact(getattr(op, name)) for name in rule.params},
            dtype=DTYPES[op.x.dtype],
        )
        with block:
            builder = MbBuilder(op, opset)
            try:
                value = rule.lower(builder, fused)
            except ValueError as e:  # LoweringFailed among them: no replacement exists at conversion time either
                raise ValueError(f"mlopt::lower_{rule.name}: the replacement of '{op.name}' could not be built ({e}); "
                                 f"convert without the {rule.name} rule (rules=...)") from None
            builder.finish(value, op.outputs[0])
            block.remove_ops([op])


def _exact(var):
    """A fused op's float parameter as the fusion wrote it: common::add_fp16_cast may have put a cast to fp16 in
    front of it (1e-6 would become 1.013e-6, 1e-8 zero); the builder applies the opset's rules itself."""
    while var.op is not None and var.op.op_type == "cast" and var.op.x.val is not None:
        var = var.op.x
    return float(var.val)


_REGISTERED = {}  # rule name -> the rule object its passes were registered for


def register(rule):
    """Register the rule's fused op and its two passes under their names (coremltools' registry keys a pass by
    its class name); again only if another rule object took its name. Called when a pipeline is built."""
    ops.register(rule)
    if _REGISTERED.get(rule.name) is rule:
        return
    for base, name in ((_Fuse, fuse_pass_name(rule)), (_Lower, lower_pass_name(rule))):
        cls = type(name.split("::")[1], (base,), {"rule": rule, "__doc__": f"{base.__doc__} ({rule.name})"})
        register_pass(namespace="mlopt", override=True)(cls)
    _REGISTERED[rule.name] = rule
