"""Op signatures: every op of a parsed program checked against coremltools' op registry for its function's opset.

graph/validate.py calls `op_problem` for every op while it walks the program, so every command (optimize,
inspect, verify, and whatever reads a package next) refuses the same malformed program with the same one line,
before anything acts on it. An op passes when:

- its type is an op of the function's opset (CoreML5 = iOS15 ... CoreML9 = iOS26), the version coremltools'
  loader would pick for it;
- every input it binds is one the op takes, and every required input is bound;
- each input binds what the op takes there: one tensor of an allowed dtype (inputs that share a type domain
  share one dtype), a list, a state; or any number of values for a tuple input (`concat`'s `values`).

The signatures come from op_signatures.json, generated from coremltools' registry by graph/signature_table.py
(docs/validation.md says how to regenerate it); the table is read from the JSON, so the command line never imports
coremltools. `const` and `constexpr_*` ops take their parameters as attributes or inputs (coremltools' loader
reads both), so for them both count as bound.
"""

import json
import os
from functools import lru_cache

from ..package.proto import MIL_pb2
from .dtypes import name as dtype_name

TABLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "op_signatures.json")
TARGETS = {"CoreML5": "iOS15", "CoreML6": "iOS16", "CoreML7": "iOS17", "CoreML8": "iOS18", "CoreML9": "iOS26"}
_KINDS = {"tensorType": "a tensor", "listType": "a list", "tupleType": "a tuple", "dictionaryType": "a dictionary", "stateType": "a state"}
_ACCEPTS = {"list": {"listType"}, "state": {"stateType"}, "list_tensor_or_dict": {"listType", "tensorType", "dictionaryType"}}
_DESCRIBE = {"list": "a list", "state": "a state", "list_tensor_or_dict": "a list, tensor or dictionary"}


@lru_cache(maxsize=1)
def table():
    with open(TABLE, encoding="utf-8") as f:
        return json.load(f)


def signature(op_type, opset):
    """The op's inputs in `opset` ({name: {"required", "kind", "dtypes"?, "domain"?}}), or None if it has none."""
    t = table()
    key = t["opsets"].get(opset, {}).get(op_type)
    return None if key is None else t["signatures"][key]


def _opset_text(opset):
    return f"{opset} ({TARGETS[opset]})" if opset in TARGETS else opset


def _unknown_op(op_type, opset):
    later = [o for o in TARGETS if op_type in table()["opsets"].get(o, {})]
    if later:
        return f"is not an op of opset {_opset_text(opset)}; it needs {_opset_text(later[0])} or later"
    return f"has an unknown op type '{op_type}'"


@lru_cache(maxsize=None)
def _compiled(key):
    """A signature as the check reads it: {input: (required, kind, allowed dtype codes, domain)}."""
    sig = table()["signatures"][key]
    return {
        name: (spec["required"] and spec["kind"] != "internal",  # internal: cond's _true_fn, while_loop's _body:
               # a saved program holds blocks instead, and coremltools' loader makes them up
               spec["kind"], frozenset(MIL_pb2.DataType.Value(d) for d in spec.get("dtypes", ())), spec.get("domain"))
        for name, spec in sig.items()
    }


def op_problem(op, opset, type_of):
    """What is wrong with `op` against its signature in `opset` (a phrase to follow the op's description), or None.
    `type_of(name)` gives the ValueType of a value the op reads by name (defined before it: validate.py checks).
    When several things are wrong, the first in input-name order is reported, whatever order the file holds."""
    ops = table()["opsets"].get(opset)
    if ops is None:  # an alternative body for an opset mlopt does not know: not checked here
        return None
    key = ops.get(op.type)
    if key is None:
        return _unknown_op(op.type, opset)
    if op.type == "const" and not op.inputs:  # its one parameter, `val`, is checked by validate.py
        return None
    sig = _compiled(key)
    return _problem(op, sig, type_of, ordered=False) and _problem(op, sig, type_of, ordered=True)


def _problem(op, sig, type_of, ordered):
    bound = {}  # input name -> list of ValueTypes of its bindings
    items = sorted(op.inputs.items()) if ordered else op.inputs.items()
    for param, argument in items:
        bound[param] = [type_of(b.name) if b.WhichOneof("binding") == "name" else b.value.type for b in argument.arguments]
    if op.type == "const" or op.type.startswith("constexpr_"):  # parameters as attributes count as bound
        for param in sorted(op.attributes) if ordered else op.attributes:
            if param != "name":
                bound.setdefault(param, [op.attributes[param].type])
    for param in bound:
        if param not in sig:
            return f"has an input '{param}' that {op.type} does not take (it takes {', '.join(sorted(sig)) or 'none'})"
    for param in sorted(sig) if ordered else sig:
        if sig[param][0] and param not in bound:
            return f"lacks its required input '{param}'"
    domains = {}  # domain id -> (input, dtype) of the first input bound in it
    for param, types in bound.items():
        _, kind, allowed, domain = sig[param]
        if kind == "tuple" or kind == "internal":
            continue
        if len(types) != 1:
            return f"input '{param}' binds {len(types)} values; {op.type} takes one there"
        held = types[0].WhichOneof("type")
        if kind == "tensor":
            if held != "tensorType":
                return f"input '{param}' is {_KINDS.get(held, 'untyped')}; {op.type} takes a tensor there"
            dtype = types[0].tensorType.dataType
            if dtype not in allowed:
                names = " or ".join(sorted(dtype_name(d) for d in allowed))
                return f"input '{param}' is {dtype_name(dtype)}; {op.type} takes {names} there"
            if domain is not None:
                first = domains.setdefault(domain, (param, dtype))
                if first[1] != dtype:
                    return (f"inputs '{first[0]}' ({dtype_name(first[1])}) and '{param}' ({dtype_name(dtype)}) must "
                            f"have one dtype in {op.type}")
        elif held not in _ACCEPTS[kind]:
            return f"input '{param}' is {_KINDS.get(held, 'untyped')}; {op.type} takes {_DESCRIBE[kind]} there"
    return None
