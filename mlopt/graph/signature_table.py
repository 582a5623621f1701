"""Generate op_signatures.json, the op signatures graph/signatures.py checks every parsed program against.

    python -m mlopt.graph.signature_table          # rewrites mlopt/graph/op_signatures.json

The table is read from coremltools' own op registry (`SSAOpRegistry.core_ops`: the op definitions under
coremltools/converters/mil/mil/ops/defs/iOS15 ... iOS18, each an `input_spec` of required and optional inputs
with their type domains), so mlopt refuses exactly the op types, missing inputs and input types that coremltools'
program loader (`milproto.load`) refuses. It is committed rather than built at run time because importing
coremltools costs seconds and the command line never does; tests/test_signatures.py builds it again in memory and
compares, so a coremltools upgrade that changes a signature fails the suite instead of going stale silently.

Not a module the command line imports: it imports coremltools.
"""

import json
import os

TABLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "op_signatures.json")

# ML program opset names (Function.opset) -> the coremltools target whose op versions they hold
OPSETS = {"CoreML5": "iOS15", "CoreML6": "iOS16", "CoreML7": "iOS17", "CoreML8": "iOS18", "CoreML9": "iOS26"}


def _input(spec_type, type_domains, types_to_proto):
    """One input of an input_spec as the table holds it."""
    from coremltools.converters.mil.mil import input_type as it

    entry = {"required": not spec_type.optional}
    if isinstance(spec_type, it.TensorInputType):
        if spec_type.type_domain_id is not None:  # the op class's own domain: coremltools resolves the id (and
            domain = type_domains[spec_type.type_domain_id]  # overwrites type_domain) per op it builds
            entry["domain"] = spec_type.type_domain_id  # inputs sharing a domain id share one dtype
        else:
            domain = spec_type.type_domain
        entry["kind"] = "tensor"
        entry["dtypes"] = sorted({types_to_proto(t) for t in domain})
    elif isinstance(spec_type, it.ListInputType):
        entry["kind"] = "list"
    elif isinstance(spec_type, it.ListOrTensorOrDictInputType):
        entry["kind"] = "list_tensor_or_dict"
    elif isinstance(spec_type, it.TupleInputType):
        entry["kind"] = "tuple"
    elif isinstance(spec_type, it.StateInputType):
        entry["kind"] = "state"
    else:  # InternalInputType, PyFunctionInputType: nothing a saved program binds
        entry["kind"] = "internal"
    return entry


def _signature(op_cls, types_to_proto, rename=None):
    rename = rename or {}
    type_domains = getattr(op_cls, "type_domains", {}) or {}
    return {
        rename.get(name, name): _input(spec_type, type_domains, types_to_proto)
        for name, spec_type in op_cls.input_spec.input_types.items()
    }


def build_table():
    """The table as a dict: {"coremltools": version, "opsets": {opset: {op type: signature id}}, "signatures":
    {signature id: {input: {"required", "kind", "dtypes"?, "domain"?}}}}. A signature id is "op@target", the
    coremltools target that introduced that version of the op; later opsets share it until a new version."""
    import coremltools
    from coremltools import target
    from coremltools.converters.mil.backend.mil.helper import types_to_proto_primitive
    from coremltools.converters.mil.mil.ops.helper import _get_version_of_op
    from coremltools.converters.mil.mil.ops.registry import SSAOpRegistry

    from ..package.proto import MIL_pb2

    def types_to_proto(t):
        return MIL_pb2.DataType.Name(types_to_proto_primitive(t))

    def first_target(variants, cls):
        return min(v for v, c in variants.items() if c is cls).name

    signatures, opsets = {}, {}
    for opset, target_name in OPSETS.items():
        version = getattr(target, target_name)
        ops = {}
        for op_type in sorted(SSAOpRegistry.core_ops):
            variants = SSAOpRegistry.core_ops[op_type]
            try:  # the loader's own choice of version (a target past the newest inherits the newest)
                cls = _get_version_of_op(variants, version)
            except ValueError:  # no version of the op in this opset
                continue
            if not cls.__module__.startswith("coremltools."):  # registered by someone else (mlopt's own fused
                continue  # mlopt_<rule> ops of the conversion-time passes, lowered before anything is saved)
            key = f"{op_type}@{first_target(variants, cls)}"
            signatures.setdefault(key, _signature(cls, types_to_proto))
            ops[op_type] = key
        # coremltools writes its coreml_update_state as write_state(input=state, data=value) + read_state, and
        # its loader reads write_state back the same way: the signature of coreml_update_state, renamed
        if "read_state" in ops:
            update = SSAOpRegistry.dialect_ops["coreml_update_state"]
            key = "write_state@" + ops["read_state"].split("@")[1]
            signatures.setdefault(key, _signature(update, types_to_proto, {"state": "input", "value": "data"}))
            ops["write_state"] = key
        opsets[opset] = ops
    return {
        "about": "generated by `python -m mlopt.graph.signature_table` from coremltools' op registry; do not edit",
        "coremltools": coremltools.__version__,
        "opsets": opsets,
        "signatures": dict(sorted(signatures.items())),
    }


def render(table):
    return json.dumps(table, indent=1, sort_keys=True) + "\n"


def main():
    with open(TABLE, "w") as f:
        f.write(render(build_table()))
    print(f"wrote {TABLE}")


if __name__ == "__main__":
    main()
