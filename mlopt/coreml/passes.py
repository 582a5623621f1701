"""coremltools graph passes: `mlopt::fuse_rms_norm` and `mlopt::lower_ane_rms_norm_to_layer_norm`.

The fusion runs patterns/rmsnorm.py - the same matching code `mlopt optimize` runs on saved specs - over a pymil
function through PymilGraph, and replaces each matched chain by one `ane_rms_norm` op. It runs before
`common::add_fp16_cast`, while chains are plain fp32, so precision selection sees one op. The lowering runs after
it, when dtypes are final, and emits the LayerNorm trick with the opset's dtype rules (rewrites/opset_rules.py).

Both take the option `compute_units` (`PassPipeline.set_options(name, {"compute_units": "CPU_AND_NE"})`) and do
nothing unless it is CPU_AND_NE: the trick only pays where the Neural Engine is targeted explicitly. Set it on both
(pipeline.py does): a fused op left unlowered cannot be saved.
"""

import numpy as np

from coremltools.converters.mil.mil import Builder as mb
from coremltools.converters.mil.mil import types
from coremltools.converters.mil.mil.passes.graph_pass import AbstractGraphPass
from coremltools.converters.mil.mil.passes.pass_registry import register_pass

from ..compute_units import REWRITING_UNITS, compute_units_name
from ..graph.dtypes import CAST_NAMES, NUMPY
from ..patterns import find_rms_norms
from ..rewrites.layer_norm_trick import first_half
from ..rewrites.opset_rules import epsilon_dtype
from .pymil_graph import DTYPES, PymilGraph

FUSE = "mlopt::fuse_rms_norm"
LOWER = "mlopt::lower_ane_rms_norm_to_layer_norm"


class _ComputeUnitsOption(AbstractGraphPass):
    def __init__(self):
        self.compute_units = None  # set through PassPipeline.set_options

    def enabled(self):
        return self.compute_units is not None and compute_units_name(self.compute_units) in REWRITING_UNITS


def _opset(function):
    """"CoreML7" etc. for a pymil function (its target's specification version minus one)."""
    return f"CoreML{function.opset_version.value - 1}"


def _blocks(block):
    yield block
    for op in list(block.operations):
        for nested in op.blocks:
            yield from _blocks(nested)


@register_pass(namespace="mlopt")
class fuse_rms_norm(_ComputeUnitsOption):
    """RMSNorm chains (every spelling patterns/rmsnorm.py knows, casts included) -> ane_rms_norm."""

    def apply(self, prog):
        if not self.enabled():
            return
        for name, function in prog.functions.items():
            graph = PymilGraph(name, function)
            for candidate in find_rms_norms(graph):
                if candidate.match is not None:
                    self._fuse(graph, candidate.match)

    def _fuse(self, graph, match):
        x, out = graph.vars[match.x], graph.vars[match.output]
        anchor = match.output_op
        block = anchor.enclosing_block
        dtype = CAST_NAMES[match.dtype]
        with block:
            gamma = None
            if match.gamma is not None:
                gamma = graph.vars[match.gamma]
                if DTYPES.get(gamma.dtype) != match.dtype:
                    gamma = mb.cast(x=gamma, dtype=dtype, before_op=anchor)
            epsilon = NUMPY[epsilon_dtype(_opset(graph.function), match.dtype, match.epsilon)](match.epsilon)
            fused = mb.ane_rms_norm(
                x=x, gamma=gamma, epsilon=epsilon, axes=np.array(match.axes, np.int32), before_op=anchor, name=f"{anchor.name}_ane_rms_norm"
            )
            if DTYPES.get(out.dtype) != match.dtype:
                fused = mb.cast(x=fused, dtype=CAST_NAMES[DTYPES[out.dtype]], before_op=anchor)
            block.replace_uses_of_var_after_op(anchor_op=anchor, old_var=out, new_var=fused)
        _remove_dead(graph, match.ops)


def _remove_dead(graph, names):
    """Remove the chain's ops nothing uses any more (an intermediate used elsewhere keeps its ops)."""
    ops = sorted((op for op in graph.ops() if op.name in set(names)), key=graph.position, reverse=True)
    for op in ops:
        if all(not v.child_ops and not v.consuming_blocks for v in op.outputs):
            op.enclosing_block.remove_ops([op])


@register_pass(namespace="mlopt")
class lower_ane_rms_norm_to_layer_norm(_ComputeUnitsOption):
    """ane_rms_norm -> slice(layer_norm(concat([x, -x], axis), axes, eps), first half) [* gamma]."""

    def apply(self, prog):
        if not self.enabled():
            return
        for function in prog.functions.values():
            for block in _blocks(function):
                for op in [op for op in block.operations if op.op_type == "ane_rms_norm"]:
                    self._lower(op, block, _opset(function))

    def _lower(self, op, block, opset):
        x, axes = op.x, [int(a) for a in np.asarray(op.axes.val).reshape(-1)]
        np_dtype = types.nptype_from_builtin(x.dtype)
        axis, rank = axes[0], x.rank
        epsilon = float(op.epsilon.val)
        with block:
            neg = mb.mul(x=x, y=np_dtype(-1), before_op=op, name=f"{op.name}_neg")
            both = mb.concat(values=[x, neg], axis=axis, before_op=op, name=f"{op.name}_concat")
            eps = NUMPY[epsilon_dtype(opset, DTYPES[x.dtype], epsilon)](epsilon)
            normed = mb.layer_norm(x=both, axes=axes, epsilon=eps, before_op=op, name=f"{op.name}_layer_norm")
            end, end_mask = first_half(rank, axis, x.shape[axis])
            out = mb.slice_by_index(
                x=normed, begin=np.zeros(rank, np.int32), end=end, end_mask=end_mask, before_op=op, name=f"{op.name}_slice"
            )
            if op.gamma is not None:
                out = mb.mul(x=out, y=op.gamma, before_op=op, name=f"{op.name}_scaled")
            block.replace_uses_of_var_after_op(anchor_op=op, old_var=op.outputs[0], new_var=out)
            block.remove_ops([op])
