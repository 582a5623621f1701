"""Malformed ML programs: parse a package's model.mlmodel with coremltools' protobuf classes, break its program in
one precise way, and write it back. These are specs a converter would never emit but a file can hold: cycles,
undefined values, impossible shapes and types, non-finite constants, weights pointing anywhere.

`PROGRAM_MUTATIONS[name](spec, rng, package)` edits `spec` in place, choosing its target with `rng`; it raises
`NotApplicable` when the spec has nothing to break that way. `package` is None when only checking applicability
(mutations that also patch weight.bin then skip the file).
"""

import math
import os
import random
import struct

import numpy as np

from .mutators import MODEL

NORMALISED_DIM_BOMB = 10**8


class NotApplicable(Exception):
    pass


def load_spec(package_or_bytes):
    from mlopt.package.proto import Model_pb2

    spec = Model_pb2.Model()
    if isinstance(package_or_bytes, bytes):
        spec.ParseFromString(package_or_bytes)
    else:
        with open(os.path.join(package_or_bytes, MODEL), "rb") as f:
            spec.ParseFromString(f.read())
    return spec


def mutate_program(package, how, seed):
    spec = load_spec(package)
    PROGRAM_MUTATIONS[how](spec, random.Random(seed), package)
    with open(os.path.join(package, MODEL), "wb") as f:
        f.write(spec.SerializeToString())


def applies(model_bytes, how, seed):
    try:
        PROGRAM_MUTATIONS[how](load_spec(model_bytes), random.Random(seed), None)
        return True
    except NotApplicable:
        return False


# --- finding things in a spec ----------------------------------------------------------------------------------------

def _choice(rng, candidates):
    if not candidates:
        raise NotApplicable
    return rng.choice(candidates)


def _blocks(spec):
    return [b for f in spec.mlProgram.functions.values() for b in f.block_specializations.values()]


def _ops(spec, keep=lambda op: True):
    """(block, op) for every op of every block (nested blocks too) passing `keep`."""
    found = []

    def visit(block):
        for op in block.operations:
            if keep(op):
                found.append((block, op))
            for nested in op.blocks:
                visit(nested)

    for block in _blocks(spec):
        visit(block)
    return found


def _producers(spec):
    return {out.name: op for _, op in _ops(spec) for out in op.outputs}


def _named_args(op):
    return [(param, binding) for param, arg in sorted(op.inputs.items()) for binding in arg.arguments if binding.WhichOneof("binding") == "name"]


def _consumers(spec, keep_producer):
    """(block, op, param, binding) where `binding` names a value whose producer passes `keep_producer`."""
    producers = _producers(spec)
    return [
        (block, op, param, b)
        for block, op in _ops(spec)
        for param, b in _named_args(op)
        if b.name in producers and keep_producer(producers[b.name])
    ]


def _tensor_types(spec):
    """Every TensorType: function inputs, op outputs (consts included) and const values."""
    types = [i.type.tensorType for f in spec.mlProgram.functions.values() for i in f.inputs if i.type.HasField("tensorType")]
    for _, op in _ops(spec):
        types += [o.type.tensorType for o in op.outputs if o.type.HasField("tensorType")]
        if op.type == "const" and "val" in op.attributes:
            types.append(op.attributes["val"].type.tensorType)
    return types


def _is_const(op):
    return op.type == "const" and "val" in op.attributes


def _is_float_const(op, rank):
    t = op.attributes["val"].type.tensorType if _is_const(op) else None
    return t is not None and t.dataType in (10, 11, 12) and (t.rank == 0 if rank == 0 else t.rank >= 1)


def _value_type(spec, name):
    for f in spec.mlProgram.functions.values():
        for i in f.inputs:
            if i.name == name:
                return i.type
    for _, op in _ops(spec):
        for o in op.outputs:
            if o.name == name:
                return o.type
    raise NotApplicable


def _new_op(op_type, inputs, output, value_type):
    """`op_type(inputs) -> output`; inputs: param -> value name, or a Value (an immediate)."""
    from mlopt.package.proto import MIL_pb2

    op = MIL_pb2.Operation(type=op_type)
    for param, source in inputs.items():
        binding = op.inputs[param].arguments.add()
        if isinstance(source, str):
            binding.name = source
        else:
            binding.value.CopyFrom(source)
    op.outputs.add(name=output).type.CopyFrom(value_type)
    return op


def _insert(block, before, new_ops):
    """Insert `new_ops` just before op `before`. The block is rebuilt from copies, so references into it go stale:
    edit existing ops first."""
    ops = [type(op).FromString(op.SerializeToString()) for op in block.operations]
    index = ops.index(before)
    del block.operations[:]
    block.operations.extend(ops[:index] + new_ops + ops[index:])


def _string_value(text):
    from mlopt.package.proto import MIL_pb2

    value = MIL_pb2.Value()
    value.type.tensorType.dataType = 2  # STRING
    value.immediateValue.tensor.strings.values.append(text)
    return value


def _set_floats(value, numbers, package=None):
    """Write `numbers` into a float const's value: immediate (floats, doubles or fp16 bytes) or its weight.bin blob."""
    dtype = {10: np.float16, 11: np.float32, 12: np.float64}[value.type.tensorType.dataType]
    kind = value.WhichOneof("value")
    if kind == "immediateValue":
        tensor = value.immediateValue.tensor
        field = tensor.WhichOneof("value")
        if field == "bytes":
            tensor.bytes.values = np.array(numbers, dtype=dtype).tobytes()
        elif field in ("floats", "doubles"):
            getattr(tensor, field).values[:] = numbers
        else:
            raise NotApplicable
    elif kind == "blobFileValue" and package is not None:
        blob = value.blobFileValue
        path = os.path.join(package, os.path.dirname(MODEL), blob.fileName.replace("@model_path/", "", 1))
        with open(path, "r+b") as f:
            f.seek(blob.offset + 16)
            (data_offset,) = struct.unpack("<Q", f.read(8))
            f.seek(data_offset)
            f.write(np.array(numbers, dtype=dtype).tobytes())


def _element_count(value):
    return int(np.prod([d.constant.size for d in value.type.tensorType.dimensions]))


# --- the mutations -----------------------------------------------------------------------------------------------------

def undefined_input(spec, rng, package):
    _, _, binding = _choice(rng, [(op, p, b) for _, op in _ops(spec, lambda o: o.type != "const") for p, b in _named_args(op)])
    binding.name = "fuzz_undefined_value"


def _cast_chain(spec, rng, length):
    """Make an op read the first of `length` casts that read each other in a ring (1: a cast reading itself)."""
    block, op = _choice(rng, [(b, o) for b, o in _ops(spec, lambda o: o.type != "const") if _named_args(o)])
    _, binding = rng.choice(_named_args(op))
    value_type = _value_type(spec, binding.name)
    names = [f"fuzz_cast_{k}" for k in range(length)]
    binding.name = names[0]
    casts = [_new_op("cast", {"x": names[(k + 1) % length], "dtype": _string_value("fp32")}, name, value_type) for k, name in enumerate(names)]
    _insert(block, op, casts)


def gamma_self(spec, rng, package):
    """The gamma of a `mul(gamma)` becomes `add(g, gamma) -> g`: computed from itself."""
    block, op, _, binding = _choice(rng, [c for c in _consumers(spec, lambda p: _is_float_const(p, 1)) if c[1].type == "mul"])
    gamma, binding.name = binding.name, "fuzz_gamma"
    _insert(block, op, [_new_op("add", {"x": "fuzz_gamma", "y": gamma}, "fuzz_gamma", _value_type(spec, gamma))])


def no_outputs(spec, rng, package):
    _, op = _choice(rng, _ops(spec, lambda o: o.type != "const"))
    del op.outputs[:]


def _reduce_axes(spec, rng):
    """The const holding the axes of a reduction."""
    _, op, _, binding = _choice(rng, [c for c in _consumers(spec, _is_const) if c[1].type.startswith("reduce_") and c[2] == "axes"])
    return _producers(spec)[binding.name].attributes["val"]


def set_axes(values):
    def mutate(spec, rng, package):
        value = _reduce_axes(spec, rng)
        value.immediateValue.tensor.ints.values[:] = values
        value.type.tensorType.dimensions[0].constant.size = len(values)

    return mutate


def immediate_length(longer):
    """Give an immediate const more (or fewer) values than its type has room for."""

    def mutate(spec, rng, package):
        values = [o.attributes["val"] for _, o in _ops(spec, _is_const)]
        tensor = _choice(rng, [v.immediateValue.tensor for v in values if v.immediateValue.tensor.WhichOneof("value")])
        kind = tensor.WhichOneof("value")
        field = getattr(tensor, kind)
        if kind == "bytes":
            field.values = field.values + b"\x01\x02\x03" if longer else field.values[:-1]
        elif longer:
            field.values.extend(list(field.values) * 2 or [{"strings": "x", "bools": True}.get(kind, 1)])
        else:
            del field.values[:]

    return mutate


def set_dimension(size):
    def mutate(spec, rng, package):
        tensor = _choice(rng, [t for t in _tensor_types(spec) if t.rank and t.dimensions and t.dimensions[0].HasField("constant")])
        rng.choice(tensor.dimensions).constant.size = size

    return mutate


def const_without_val(spec, rng, package):
    _, op = _choice(rng, _ops(spec, _is_const))
    del op.attributes["val"]


def spec_version(version):
    def mutate(spec, rng, package):
        spec.specificationVersion = version

    return mutate


def epsilon(number):
    """Set the epsilon of a norm (a scalar float const added, or rsqrt's `epsilon`) to `number`."""

    def mutate(spec, rng, package):
        candidates = [c for c in _consumers(spec, lambda p: _is_float_const(p, 0)) if (c[1].type, c[2]) in (("add", "x"), ("add", "y"), ("rsqrt", "epsilon"))]
        *_, binding = _choice(rng, candidates)
        _set_floats(_producers(spec)[binding.name].attributes["val"], [number], package)

    return mutate


def gamma_inf(spec, rng, package):
    """Put +-Inf into one element of a gamma (a float vector const multiplied in; possibly stored in weight.bin)."""
    *_, binding = _choice(rng, [c for c in _consumers(spec, lambda p: _is_float_const(p, 1)) if c[1].type == "mul"])
    value = _producers(spec)[binding.name].attributes["val"]
    count = _element_count(value)
    numbers = [1.0] * count
    numbers[rng.randrange(count)] = rng.choice([math.inf, -math.inf])
    _set_floats(value, numbers, package)


def pow_exponent_nan(spec, rng, package):
    *_, binding = _choice(rng, [c for c in _consumers(spec, lambda p: _is_float_const(p, 0)) if c[1].type == "pow" and c[2] == "y"])
    _set_floats(_producers(spec)[binding.name].attributes["val"], [math.nan], package)


def set_opset(opset, move_body):
    """A function's opset becomes `opset`, its body moved along (an unknown opset) or left where it was (no body)."""

    def mutate(spec, rng, package):
        name = _choice(rng, sorted(spec.mlProgram.functions))
        function = spec.mlProgram.functions[name]
        if move_body:
            function.block_specializations[opset].CopyFrom(function.block_specializations[function.opset])
            del function.block_specializations[function.opset]
        elif opset in function.block_specializations:
            raise NotApplicable
        function.opset = opset

    return mutate


def _reduction_with(*params):
    """An op filter: a reduce_* op with an argument for each of `params` (checked without creating map entries)."""
    return lambda op: op.type.startswith("reduce_") and all(p in op.inputs and op.inputs[p].arguments for p in params)


def normalised_dim_bomb(spec, rng, package):
    """Declare the normalised dimension of a norm as 10**8 wherever that size appears: a small model whose types
    promise a 10**8-wide tensor (inputs, intermediates, gamma)."""
    producers = _producers(spec)
    reductions = [op for _, op in _ops(spec, _reduction_with("axes", "x"))]
    op = _choice(rng, [op for op in reductions if op.inputs["axes"].arguments[0].name in producers])
    x_type = _value_type(spec, op.inputs["x"].arguments[0].name).tensorType
    axes = producers[op.inputs["axes"].arguments[0].name].attributes["val"].immediateValue.tensor.ints.values
    size = x_type.dimensions[axes[0]].constant.size if len(axes) and -x_type.rank <= axes[0] < x_type.rank else 0
    if size < 2:
        raise NotApplicable
    for tensor in _tensor_types(spec):
        for d in tensor.dimensions:
            if d.HasField("constant") and d.constant.size == size:
                d.constant.size = NORMALISED_DIM_BOMB
    for feature in list(spec.description.input) + list(spec.description.output):
        shape = feature.type.multiArrayType.shape
        shape[:] = [NORMALISED_DIM_BOMB if s == size else s for s in shape]


def unknown_op_type(spec, rng, package):
    _, op = _choice(rng, _ops(spec, lambda o: o.type != "const"))
    op.type = "fuzz_unknown_op"


def duplicate_output(spec, rng, package):
    outputs = [o for _, op in _ops(spec, lambda o: o.type != "const") for o in op.outputs]
    if len(outputs) < 2:
        raise NotApplicable
    a, b = rng.sample(outputs, 2)
    b.name = a.name


def block_output_undefined(spec, rng, package):
    block = _choice(rng, [b for b in _blocks(spec) if b.outputs])
    block.outputs[rng.randrange(len(block.outputs))] = "fuzz_nowhere"


def no_functions(spec, rng, package):
    spec.mlProgram.functions.clear()


def rename_main(spec, rng, package):
    functions = spec.mlProgram.functions
    if "main" not in functions:
        raise NotApplicable
    functions["fuzz_main"].CopyFrom(functions["main"])
    del functions["main"]


def blob(edit):
    """Edit the blobFileValue of a const stored in weight.bin."""

    def mutate(spec, rng, package):
        values = [o.attributes["val"] for _, o in _ops(spec, _is_const) if o.attributes["val"].WhichOneof("value") == "blobFileValue"]
        edit(_choice(rng, values).blobFileValue, rng)

    return mutate


def set_rank(rank):
    def mutate(spec, rng, package):
        _choice(rng, [t for t in _tensor_types(spec) if t.rank]).rank = rank

    return mutate


def set_dtype(code):
    def mutate(spec, rng, package):
        _choice(rng, [t for t in _tensor_types(spec) if t.dataType]).dataType = code

    return mutate


def clear_input_type(spec, rng, package):
    function = spec.mlProgram.functions[_choice(rng, sorted(spec.mlProgram.functions))]
    _choice(rng, list(function.inputs)).type.Clear()


# --- ops that break their signature (graph/signatures.py) -------------------------------------------------------

def _ops_by_opset(spec, keep=lambda op: True):
    """(opset, block, op) for every op of every function's body (nested blocks too) passing `keep`."""
    found = []

    def visit(opset, block):
        for op in block.operations:
            if keep(op):
                found.append((opset, block, op))
            for nested in op.blocks:
                visit(opset, nested)

    for name in sorted(spec.mlProgram.functions):
        function = spec.mlProgram.functions[name]
        if function.opset in function.block_specializations:
            visit(function.opset, function.block_specializations[function.opset])
    return found


def _computes(op):
    return op.type != "const" and not op.type.startswith("constexpr_")


def missing_required_input(spec, rng, package):
    """Take away an input the op's signature requires (an `rsqrt` without its `x`)."""
    from mlopt.graph.signatures import signature

    candidates = []
    for opset, _, op in _ops_by_opset(spec, _computes):
        sig = signature(op.type, opset) or {}
        candidates += [(op, p) for p in sorted(op.inputs) if sig.get(p, {}).get("required") and sig[p]["kind"] != "internal"]
    op, param = _choice(rng, candidates)
    del op.inputs[param]


def op_from_a_later_opset(spec, rng, package):
    """An op's type becomes one its function's opset does not have yet (an iOS18 op in an iOS15 program)."""
    from mlopt.graph.signatures import table

    opsets = table()["opsets"]
    candidates = [(opset, op) for opset, _, op in _ops_by_opset(spec, _computes) if set(opsets["CoreML8"]) - set(opsets[opset])]
    opset, op = _choice(rng, candidates)
    op.type = rng.choice(sorted(set(opsets["CoreML8"]) - set(opsets[opset])))


_LITERALS = {  # dtype code -> how an immediate scalar of it is written
    2: lambda t: t.strings.values.append("fuzz"),  # STRING
    1: lambda t: t.bools.values.append(True),  # BOOL
    23: lambda t: t.ints.values.append(1),  # INT32
    11: lambda t: t.floats.values.append(1.0),  # FLOAT32
    10: lambda t: setattr(t.bytes, "values", np.float16(1).tobytes()),  # FLOAT16
}


def wrong_input_dtype(spec, rng, package):
    """Bind a tensor input to a new scalar const of a dtype the op does not take there (a string into `rsqrt`)."""
    from mlopt.graph.signatures import signature
    from mlopt.package.proto import MIL_pb2

    candidates = []
    for opset, block, op in _ops_by_opset(spec, _computes):
        sig = signature(op.type, opset) or {}
        for param in sorted(op.inputs):
            spec_in = sig.get(param, {})
            if spec_in.get("kind") == "tensor" and len(op.inputs[param].arguments) == 1:
                wrong = [d for d in _LITERALS if MIL_pb2.DataType.Name(d) not in spec_in["dtypes"]]
                if wrong:
                    candidates.append((block, op, param, wrong[0]))
    block, op, param, dtype = _choice(rng, candidates)
    value = MIL_pb2.Value()
    value.type.tensorType.dataType = dtype
    _LITERALS[dtype](value.immediateValue.tensor)
    op.inputs[param].arguments[0].Clear()
    op.inputs[param].arguments[0].name = "fuzz_wrong_dtype"
    const = _new_op("const", {}, "fuzz_wrong_dtype", value.type)
    const.attributes["val"].CopyFrom(value)
    _insert(block, op, [const])


SIGNATURE_MUTATIONS = ("input-missing-required", "op-unknown-type", "op-from-later-opset", "input-wrong-dtype")


def _assign(name, value):
    """blob() edit: set attribute `name` to `value`, or to `value(target, rng)`."""
    return lambda target, rng: setattr(target, name, value(target, rng) if callable(value) else value)


PROGRAM_MUTATIONS = {
    "undefined-input": undefined_input,
    "cast-self": lambda s, r, p: _cast_chain(s, r, 1),
    "cast-pair": lambda s, r, p: _cast_chain(s, r, 2),
    "gamma-self": gamma_self,
    "no-outputs": no_outputs,
    "axes-empty": set_axes([]),
    "axes-out-of-range": set_axes([99]),
    "axes-int-min": set_axes([-(2**31)]),
    "immediate-long": immediate_length(True),
    "immediate-short": immediate_length(False),
    "dim-0": set_dimension(0),
    "dim-2e31": set_dimension(2**31),
    "dim-2e64-1": set_dimension(2**64 - 1),
    "const-no-val": const_without_val,
    "specver-9999": spec_version(9999),
    "specver-2e31-1": spec_version(2**31 - 1),
    "specver-1": spec_version(1),
    "eps-nan": epsilon(math.nan),
    "eps-inf": epsilon(math.inf),
    "eps-neginf": epsilon(-math.inf),
    "eps-negative": epsilon(-1.0),
    "gamma-inf": gamma_inf,
    "pow-nan": pow_exponent_nan,
    "opset-unknown": set_opset("CoreML99", move_body=True),
    "opset-no-body": set_opset("CoreML9", move_body=False),
    "membomb-normdim-1e8": normalised_dim_bomb,
    "op-unknown-type": unknown_op_type,
    "duplicate-output": duplicate_output,
    "block-output-undefined": block_output_undefined,
    "no-functions": no_functions,
    "no-main": rename_main,
    "blob-offset-huge": blob(_assign("offset", 2**62)),
    "blob-offset-unaligned": blob(_assign("offset", lambda b, r: b.offset + r.randrange(1, 64))),
    "blob-offset-header": blob(_assign("offset", 0)),
    "blob-file-missing": blob(_assign("fileName", "@model_path/weights/missing.bin")),
    "blob-file-traversal": blob(_assign("fileName", "@model_path/" + "../" * 40 + "etc/passwd")),
    "blob-file-absolute": blob(_assign("fileName", "/etc/passwd")),
    "blob-file-model": blob(_assign("fileName", "@model_path/model.mlmodel")),
    "blob-file-devzero": blob(_assign("fileName", "/dev/zero")),
    "rank-mismatch": set_rank(7),
    "rank-huge": set_rank(2**62),
    "dtype-invalid": set_dtype(999),
    "input-type-cleared": clear_input_type,
    "input-missing-required": missing_required_input,
    "op-from-later-opset": op_from_a_later_opset,
    "input-wrong-dtype": wrong_input_dtype,
}
