"""A numpy interpreter for MIL functions read from the spec: the project's way to prove rewrites without Core ML.

Semantics:
- Every value is computed in its declared dtype: fp16 stays fp16 and elementwise fp16 ops round after each op.
  Reductions, norms, softmax and matrix products accumulate fp16 operands in fp32 (as hardware accumulators do)
  and round the result to the declared dtype.
- `float_dtype=np.float64` instead computes every float value in float64, casts included: the chain's
  mathematical meaning, which the self-check compares rewrites against.
- Every computed value's shape is checked against its declared type (rank and known dims): a rewrite that
  declares a wrong type fails here, not silently on a device.
- Constants come from immediate values or lazily from weight.bin (BlobReader); an op without an
  implementation raises `UnsupportedOp` naming it. The interpreter never guesses.
- State (iOS18 `read_state`/`write_state`) lives in the evaluator; a state input's feed is its initial value.

Two ways to run: `run` executes a whole function in program order (needed for state: a read after a write has
no data edge to it); `evaluate` computes only what the requested targets depend on (an explicit stack, no
recursion), so a caller can evaluate one chain of a large model and substitute producers (`overlay`) to
evaluate a rewrite before it is spliced in.

Whatever a model file holds, evaluating it fails only with `InterpreterError` (besides bad input from the weight
reader): an op whose inputs its implementation rejects (shapes that do not broadcast, a missing parameter), a
value that depends on itself, a control-flow op without its blocks. Callers (the self-check) turn that into a
reason, not a crash.
"""

import functools
import inspect
import math

import numpy as np

from ..errors import MloptError
from ..graph.dtypes import FLOATS, NUMPY, SUB_BYTE, name as dtype_name
from ..graph.values import decode_value, tensor_shape
from ..graph.spec_graph import op_name, read_names
from ..package.weights import unpack_bits
from .ops import IMPLEMENTATIONS
from .ops.lists import TensorList
from .streamed import streamed_linear, streams

MAX_LIVE_BYTES = 2**30  # computed values a run may hold at once (weights, memory-mapped, are not counted)
MAX_LOOP_OPS = 500_000  # ops one while_loop may run (cond, body, nested loops; all iterations): ~7 s of small ops
MAX_BLOB_BYTES = 2**62  # past this a declared blob shape cannot be real (and int64 byte counts would wrap)
VARIADIC = {
    ("concat", "values"),
    ("einsum", "values"),
    ("while_loop", "loop_vars"),
    ("stack", "values"),
    ("reshape_like", "ref_tensors"),
    ("reshape_like", "begins"),
    ("reshape_like", "ends"),
    ("reshape_like", "end_masks"),
    ("make_list", "elem_shape"),  # sizes and names (symbolic sizes): see ops/lists.py
}


class InterpreterError(Exception):
    pass


class UnsupportedOp(InterpreterError):
    pass


class MissingValue(InterpreterError):
    pass


class Evaluator:
    def __init__(self, view, blobs, float_dtype=None, overlay=None, strict_shapes=True):
        self.view = view
        self.strict_shapes = strict_shapes  # False: check ranks only (inputs fed smaller than declared)
        self.blobs = blobs
        self.float_dtype = float_dtype
        self.overlay = overlay or {}  # value name -> Operation producing it instead of the function's own
        self.states = {}  # state input name -> current value
        self._free = {}
        self._ops_run = 0  # ops executed so far: bounds while_loop
        self._top = None  # the environment of the run or evaluation in progress (nested blocks copy it)
        self._live_bytes = 0  # bytes of the values computed into it
        self._sizes = {}  # value name -> bytes counted in _live_bytes (given back when a run drops the value)
        self._weights = {}  # weight value name -> its const op (a run reads each at first use)

    # -- public ---------------------------------------------------------------------------------------------
    def evaluate(self, targets, feeds):
        """Values of `targets` given `feeds` (value name -> array); only what they depend on is computed."""
        env = self._fed(feeds)
        self._top, self._live_bytes = env, 0
        stack, expanded = list(targets), set()
        while stack:
            name = stack[-1]
            if name in env:
                stack.pop()
                continue
            op = self.producer(name)
            if op is None:
                raise MissingValue(f"value '{name}' has no producer and was not fed")
            missing = [d for d in self._dependencies(op) if d not in env]
            if missing:
                if name in expanded:  # its dependencies were computed before it came up again: a cycle
                    raise InterpreterError(f"value '{name}' depends on itself")
                expanded.add(name)
                stack.extend(missing)
                continue
            self._run_op(op, env)
            stack.pop()
        return {t: env[t] for t in targets}

    def run(self, feeds, targets, after_op=None):
        """Execute the whole function in program order; return `targets` (outputs, states, or any value: a state
        input's value is the state after the run, not its feed). `after_op(op,
        env)`, if given, sees each op of the main block once it ran, and may replace its outputs as `steps` allows.

        Memory follows the working set, not the model: a weight (a const stored in weight.bin) is read, as an
        array of its own, just before the first op that needs it, and every value of the main block is dropped
        after its last use unless it is a target. A 2 GB model is run holding about one layer at a time."""
        env = self._fed(feeds)
        for op, env in self.steps(feeds, targets, env):
            if after_op is not None:
                after_op(op, env)
        weights = self._weights
        # a state input asked for is its value after the run: what the model's next prediction reads
        return {t: self.states[t] if t in self.states else env[t] if t in env or t not in weights
                else self._load(weights[t], env) for t in targets}

    def steps(self, feeds, keep=(), env=None):
        """`run`, one op at a time: yields (op, environment) after each op of the main block (weight-file
        constants are not ops here: they are read when first needed), once the values it used for the last time
        are dropped. The op's outputs are in the environment; a caller may replace them (with arrays of the same
        shape and dtype) before the walk goes on. Two evaluators stepped side by side see the same op each time:
        analyses compare runs of one program in one walk (analyses/audit_walk.py)."""
        env = self._fed(feeds) if env is None else env
        self._top, self._live_bytes, self._sizes = env, 0, {}
        drops = self._drops(self.view.main, set(keep) | set(feeds))
        self._weights = weights = {}  # weight value name -> its const op, read at first use
        for index, op in enumerate(self.view.main.operations):
            if op.type == "const" and op.attributes["val"].WhichOneof("value") == "blobFileValue" and op.outputs:
                weights[op.outputs[0].name] = op
                continue
            for name in self._dependencies(op):
                if name in weights and name not in env:
                    self._run_op(weights[name], env, copy_weights=True)
            self._run_op(op, env)
            for name in drops.get(index, ()):
                env.pop(name, None)
                self._live_bytes -= self._sizes.pop(name, 0)
            yield op, env

    def _load(self, const_op, env):
        self._run_op(const_op, env, copy_weights=True)
        return env[const_op.outputs[0].name]

    def _drops(self, block, keep):
        """{op index: values of `block` whose last use is that op}, leaving out `keep` (a use inside a nested
        block counts as a use by the op holding it)."""
        last = {}
        for index, op in enumerate(block.operations):
            for name in self._dependencies(op):
                last[name] = index
        for name in block.outputs:
            last.pop(name, None)
        drops = {}
        for name, index in last.items():
            if name not in keep:
                drops.setdefault(index, []).append(name)
        return drops

    def _fed(self, feeds):
        env = {}
        for name, value in feeds.items():
            env[name] = self._typed(name, np.asarray(value))
            if self._is_state(name):
                self.states[name] = env[name]
        return env

    def _is_state(self, name):
        vt = self.view.types.get(name)
        return vt is not None and vt.WhichOneof("type") == "stateType"

    def producer(self, name):
        return self.overlay.get(name) or self.view.producer(name)

    # -- ops ------------------------------------------------------------------------------------------------
    def _dependencies(self, op):
        deps = read_names(op)
        if op.type == "linear" and self._streamed_weight(op) is not None:  # read block by block, not loaded
            deps.remove(self.view.arg(op, "weight"))
        if op.blocks:
            deps += self._free_values(op)
        return deps

    def _free_values(self, op):
        """Values nested blocks of `op` read from outside them."""
        key = id(op)
        if key not in self._free:
            defined, used = set(), []

            def walk(block):
                defined.update(i.name for i in block.inputs)
                for inner in block.operations:
                    used.extend(read_names(inner))
                    defined.update(o.name for o in inner.outputs)
                    for nested in inner.blocks:
                        walk(nested)
                used.extend(block.outputs)

            for block in op.blocks:
                walk(block)
            self._free[key] = list(dict.fromkeys(u for u in used if u not in defined))
        return self._free[key]

    def _run_op(self, op, env, copy_weights=False):
        self._ops_run += 1
        try:
            self._run_op_unchecked(op, env, copy_weights)
        except (InterpreterError, MloptError):  # ours, or bad input from the weight reader (BlobError)
            raise
        except (KeyError, IndexError, ValueError, TypeError, ArithmeticError) as e:
            raise InterpreterError(f"op '{op_name(op)}' ({op.type}) failed: {type(e).__name__}: {e}") from None

    def _run_op_unchecked(self, op, env, copy_weights=False):
        if op.type == "const":
            result = self._const(op, copy_weights)
        elif op.type == "cond":
            result = self._cond(op, env)
        elif op.type == "while_loop":
            result = self._while_loop(op, env)
        elif op.type == "read_state":
            state = self.view.arg(op, "input")
            if state not in self.states:
                raise MissingValue(f"op '{op_name(op)}' (read_state) reads state '{state}', which was not fed")
            result = self.states[state]
        elif op.type == "write_state":
            state = self.view.arg(op, "input")
            self.states[state] = self._typed(state, np.asarray(self._argument(op, "data", env)))
            result = ()
        elif op.type == "linear" and self._streamed_weight(op) is not None:
            result = self._streamed_linear(op, env)
        elif op.type == "cast" and self.float_dtype is not None and self._float_cast(op):
            result = self._argument(op, "x", env)  # exact arithmetic: a float cast changes nothing
        else:
            impl = IMPLEMENTATIONS.get(op.type)
            if impl is None:
                raise UnsupportedOp(f"no implementation of MIL op '{op.type}' (op '{op_name(op)}')")
            kwargs = {param: self._argument(op, param, env) for param in op.inputs}
            if op.type.startswith("constexpr_"):  # before iOS18 their parameters are attributes
                what = f"op '{op_name(op)}' ({op.type}) attribute"
                kwargs.update({k: self._value(v, f"{what} '{k}'") for k, v in op.attributes.items() if k != "name"})
            missing = [p for p in _required(impl) if p not in kwargs]
            if missing:  # a malformed program: say which input, not how Python words a missing argument
                raise InterpreterError(f"op '{op_name(op)}' ({op.type}) has no input '{missing[0]}', which it requires")
            with np.errstate(all="ignore"):
                result = impl(**kwargs)
        results = result if isinstance(result, tuple) else (result,)
        if len(results) != len(op.outputs):
            raise InterpreterError(f"op '{op_name(op)}' ({op.type}) gave {len(results)} outputs, declares {len(op.outputs)}")
        for out, value in zip(op.outputs, results):
            if isinstance(value, TensorList):  # make_list, list_write, ...: held as it is, its bytes counted
                env[out.name] = value
                if env is self._top:
                    self._count(op, out.name, value)
                continue
            env[out.name] = self._checked(op, out, np.asarray(value))
            if env is self._top and op.type != "const":
                self._count(op, out.name, env[out.name])

    def _streamed_weight(self, op):
        """The stored `val` of a linear's weight large enough to be streamed (numerics/streamed.py), or None."""
        weight = self.view.arg(op, "weight")
        const = self.producer(weight) if weight is not None and self.blobs is not None else None
        if const is None or const.type != "const" or "val" not in const.attributes:
            return None
        value = const.attributes["val"]
        if value.WhichOneof("value") != "blobFileValue":
            return None
        shape = tensor_shape(value.type)
        return value if shape is not None and streams(list(shape), value.type.tensorType.dataType in FLOATS) else None

    def _streamed_linear(self, op, env):
        value = self._streamed_weight(op)
        blob, dtype = value.blobFileValue, value.type.tensorType.dataType
        rows, cols = (int(d) for d in tensor_shape(value.type))

        def read_rows(begin, count):
            block = self.blobs.read_window(blob.fileName, blob.offset, NUMPY[dtype], (rows, cols), begin * cols, count * cols)
            return self._as_compute(block.reshape(count, cols), dtype)

        bias = self._argument(op, "bias", env) if op.inputs.get("bias") is not None and op.inputs["bias"].arguments else None
        return streamed_linear(IMPLEMENTATIONS["linear"], self._argument(op, "x", env), bias, rows, cols, read_rows)

    def _count(self, op, name, value):
        """Memory stays bounded whatever the shapes say: holding more than MAX_LIVE_BYTES of computed values at
        once stops the run with an error naming the op (weights are not counted: one at a time is held)."""
        if isinstance(value, TensorList) or value.base is None or value.flags.owndata:
            self._live_bytes += value.nbytes - self._sizes.get(name, 0)
            self._sizes[name] = value.nbytes
        if self._live_bytes > MAX_LIVE_BYTES:
            raise InterpreterError(
                f"op '{op_name(op)}' ({op.type}): the values held at once take {self._live_bytes} bytes, more than "
                f"the interpreter's budget of {MAX_LIVE_BYTES}"
            )

    def _float_cast(self, op):
        if "x" not in op.inputs or not op.inputs["x"].arguments or not op.outputs:
            return False
        source = op.inputs["x"].arguments[0]
        source_type = self.view.types.get(source.name) if source.WhichOneof("binding") == "name" else source.value.type
        return (
            source_type is not None
            and source_type.tensorType.dataType in FLOATS
            and op.outputs[0].type.tensorType.dataType in FLOATS
        )

    def _argument(self, op, param, env):
        if param not in op.inputs or not op.inputs[param].arguments:
            raise InterpreterError(f"op '{op_name(op)}' ({op.type}) binds nothing to '{param}'")
        values = []
        for binding in op.inputs[param].arguments:
            if binding.WhichOneof("binding") == "name":
                values.append(env[binding.name])
            else:
                values.append(self._literal(binding.value))
        if (op.type, param) in VARIADIC:
            return values
        return values[0]

    def _literal(self, value):
        if value.WhichOneof("value") == "blobFileValue" or value.type.tensorType.dataType in SUB_BYTE:
            return self._value(value, "an inline literal")  # iOS18 constexpr ops bind their weights inline
        array = decode_value(value)
        if array is None:
            raise InterpreterError("an inline literal that is not an immediate tensor")
        return self._as_compute(array, value.type.tensorType.dataType)

    def _const(self, op, copy_weights=False):
        return self._value(op.attributes["val"], f"const '{op_name(op)}'", copy_weights)

    def _value(self, value, what, copy_weights=False):
        """A const's value or a constexpr op's attribute / inline input: immediate or in a weight file; sub-byte
        integers (compressed weights) come unpacked, as int8 / uint8 arrays."""
        kind = value.WhichOneof("value")
        dtype = value.type.tensorType.dataType if value.type.WhichOneof("type") == "tensorType" else None
        if kind == "blobFileValue":
            if dtype not in NUMPY and dtype not in SUB_BYTE:
                raise UnsupportedOp(f"{what} holds {dtype_name(dtype)} weights, which the interpreter does not read")
            shape = tensor_shape(value.type)
            if shape is None:  # a size given by a name: stored bytes have no such shape
                raise InterpreterError(f"{what} is stored in a weight file with a size unknown until run time")
            shape = list(shape)
            itemsize = np.dtype(NUMPY[dtype]).itemsize if dtype in NUMPY else 1
            if math.prod(shape) * itemsize > MAX_BLOB_BYTES:
                raise InterpreterError(f"{what} declares shape {shape}, larger than any weight file")
            if self.blobs is None:
                raise InterpreterError(f"{what} is stored in a weight file, and no weight file was given")
            blob = value.blobFileValue
            if dtype in SUB_BYTE:
                return self.blobs.read_packed(blob.fileName, blob.offset, *SUB_BYTE[dtype], shape)
            widen = self.float_dtype if dtype in FLOATS and self.float_dtype is not None else None
            return self._as_compute(self.blobs.read(blob.fileName, blob.offset, NUMPY[dtype], shape, copy=copy_weights, widen_to=widen), dtype)
        if dtype in SUB_BYTE and kind == "immediateValue" and value.immediateValue.tensor.WhichOneof("value") == "bytes":
            shape = tensor_shape(value.type)
            if shape is None:
                raise UnsupportedOp(f"{what} holds a {dtype_name(dtype)} value of unknown shape")
            return unpack_bits(value.immediateValue.tensor.bytes.values, *SUB_BYTE[dtype], math.prod(shape)).reshape(shape)
        array = decode_value(value)
        if array is None:
            raise UnsupportedOp(f"{what} holds a value kind the interpreter does not read")
        return self._as_compute(array, dtype)

    def _as_compute(self, array, dtype):
        if dtype in FLOATS and self.float_dtype is not None:
            return array.astype(self.float_dtype, copy=False)
        return array

    def _typed(self, name, array):
        vt = self.view.types.get(name)
        if vt is not None and vt.WhichOneof("type") == "stateType":
            vt = vt.stateType.wrappedType
        if vt is None or vt.WhichOneof("type") != "tensorType":
            return array
        dtype = vt.tensorType.dataType
        with np.errstate(all="ignore"):
            if dtype in FLOATS and self.float_dtype is not None:
                return array.astype(self.float_dtype)
            return array.astype(NUMPY[dtype]) if dtype in NUMPY else array

    def _checked(self, op, out, value):
        tt = out.type.tensorType if out.type.WhichOneof("type") == "tensorType" else None
        if tt is None:
            return value
        dtype = tt.dataType
        with np.errstate(all="ignore"):  # rounding to the declared dtype may overflow it: inf, as the hardware gives
            if dtype in FLOATS and self.float_dtype is not None:
                value = value.astype(self.float_dtype, copy=False)
            elif dtype in NUMPY:
                value = value.astype(NUMPY[dtype], copy=False)
        dims = tt.dimensions
        if len(dims) != value.ndim or self.strict_shapes and any(
            d.WhichOneof("dimension") == "constant" and d.constant.size != n for d, n in zip(dims, value.shape)
        ):
            declared = [d.constant.size if d.WhichOneof("dimension") == "constant" else "?" for d in dims]
            raise InterpreterError(
                f"op '{op_name(op)}' ({op.type}) computed shape {list(value.shape)} for '{out.name}', declared {declared}"
            )
        return value

    # -- control flow ----------------------------------------------------------------------------------------
    def _run_block(self, block, env, inputs=(), into=None):
        local = dict(env) if into is None else into
        for spec_input, value in zip(block.inputs, inputs):
            local[spec_input.name] = value
        for op in block.operations:
            self._run_op(op, local)
        return tuple(local[o] for o in block.outputs)

    def _cond(self, op, env):
        if len(op.blocks) != 2:
            raise InterpreterError(f"cond '{op_name(op)}' has {len(op.blocks)} blocks, not 2")
        pred = bool(np.asarray(self._argument(op, "pred", env)).reshape(-1)[0])
        outs = self._run_block(op.blocks[0] if pred else op.blocks[1], env)
        return outs if len(outs) != 1 else outs[0]

    def _while_loop(self, op, env, max_iterations=1_000_000, max_ops=None):
        """Stops after `max_iterations`, or once the loop has run `max_ops` ops (cond, body and any loop nested in
        them; a body of 17 small ops runs ~4,000 iterations a second here): a loop a malformed model never ends
        must not hang `verify`."""
        if len(op.blocks) != 2:
            raise InterpreterError(f"while_loop '{op_name(op)}' has {len(op.blocks)} blocks, not 2")
        state = tuple(self._argument(op, "loop_vars", env))
        cond_block, body = op.blocks[0], op.blocks[1]
        max_ops = MAX_LOOP_OPS if max_ops is None else max_ops
        start, done = self._ops_run, 0
        while done < max_iterations and self._ops_run - start <= max_ops:
            if not bool(np.asarray(self._run_block(cond_block, env, state)[0]).reshape(-1)[0]):
                return state if len(state) != 1 else state[0]
            state = self._run_block(body, env, state)
            done += 1
        raise InterpreterError(
            f"while_loop '{op_name(op)}' did not finish: stopped after {done} iterations ({self._ops_run - start} ops)"
        )


@functools.lru_cache(maxsize=None)
def _required(impl):
    """The inputs an op implementation cannot do without (its parameters without defaults)."""
    return tuple(p.name for p in inspect.signature(impl).parameters.values()
                 if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def run_function(view, blobs, inputs, float_dtype=None, keep=()):
    """Run a whole function: {output name: value} (plus any `keep` intermediates) for the given inputs."""
    evaluator = Evaluator(view, blobs, float_dtype=float_dtype)
    targets = list(view.main.outputs) + [k for k in keep if k not in view.main.outputs]
    return evaluator.run(inputs, targets)
