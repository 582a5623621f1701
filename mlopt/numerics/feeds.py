"""What a whole-function run of a saved program is fed, and what it may hold: shared by the analyses that run
programs (`verify`, `audit`).

- `load_npz`: the user's `--inputs` archive, checked before anything is decompressed (a few MB of .npz can hold
  gigabytes of zeros) - bad input, exit 2, naming the file.
- `function_feeds`: one function's inputs: seeded random values shaped from its declared inputs (numerics/inputs.py),
  replaced by the user's arrays where the archive names them, and one note per input saying how it was drawn or
  where it came from (the reports print them: a reader must know which inputs were used).
- `check_declared_sizes`: no computed value may declare more than MAX_VALUE_ELEMENTS elements, so memory stays
  bounded whatever the shapes say.
"""

import math
import os

import numpy as np

from ..errors import BadInputError, CannotVerify
from ..graph.spec_graph import op_name
from ..graph.type_checks import element_count
from .inputs import InputTooLarge, input_tensor, random_inputs

MAX_VALUE_ELEMENTS = 2**27  # per computed value: 512 MB as fp32; an LLM's logits for 512 tokens are ~2^26
MAX_INPUT_BYTES = 2**29  # per array of an --inputs .npz, uncompressed


def load_npz(path):
    """Arrays from an .npz the user named: a regular file (never a FIFO), holding at least one array. {} for None."""
    if path is None:
        return {}
    import stat

    try:
        st = os.stat(path)
    except OSError as e:
        raise BadInputError(path, "no such file" if isinstance(e, FileNotFoundError) else f"cannot be read ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise BadInputError(path, "is not a regular file; --inputs takes an .npz file")
    _check_npz_sizes(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (ValueError, OSError, EOFError, KeyError) as e:
        raise BadInputError(path, f"not a readable .npz file ({e})") from None
    except Exception as e:  # zipfile's BadZipFile and friends: a damaged archive
        raise BadInputError(path, f"not a readable .npz file ({type(e).__name__}: {e})") from None
    if not arrays:
        raise BadInputError(path, "holds no arrays")
    for key, array in arrays.items():  # NaN or +inf in would make every output NaN: nothing could be judged
        # -inf is a number inputs hold: the masked positions of an additive attention mask (a causal mask fed to a
        # stateful decoder, triu(full(-inf), 1)), which softmax turns into exact zeros
        if array.dtype.kind in "fc" and (np.isnan(array).any() or np.isposinf(array).any()):
            raise BadInputError(path, f"array '{key}' holds NaN or +inf; inputs must be numbers (-inf is accepted, "
                                      "as an additive attention mask holds it)")
    return arrays


def _check_npz_sizes(path):
    """BadInputError for an array larger than MAX_INPUT_BYTES, from the archive's directory, before anything is
    decompressed."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # np.load says what is wrong with it
    for member in members:
        if member.file_size > MAX_INPUT_BYTES:
            raise BadInputError(
                path, f"array '{member.filename[:-4]}' holds {member.file_size} bytes; --inputs arrays are limited to {MAX_INPUT_BYTES}"
            )


def given_for(given, function, name, feeds, path):
    """Arrays for function `name` from an .npz: keys `name/input`, or plain `input` names. Each must have the
    input's rank and its static sizes (flexible dimensions take any size)."""
    declared = {i.name: input_tensor(i.type) for i in function.inputs}
    picked = {}
    for input_name, value in feeds.items():
        key = f"{name}/{input_name}" if f"{name}/{input_name}" in given else input_name
        if key not in given:
            continue
        array = np.asarray(given[key])
        dims = declared[input_name].dimensions
        fits = array.ndim == len(dims) and all(
            d.WhichOneof("dimension") != "constant" or d.constant.size == n for d, n in zip(dims, array.shape)
        )
        if not fits:
            wanted = [d.constant.size if d.WhichOneof("dimension") == "constant" else "?" for d in dims]
            raise BadInputError(path, f"array '{key}' has shape {list(array.shape)}; input '{input_name}' of function '{name}' is {wanted}")
        if array.dtype.kind not in "biuf":
            raise BadInputError(path, f"array '{key}' holds {array.dtype}, not numbers")
        problem = _unrepresentable(array, value.dtype)
        if problem:
            raise BadInputError(path, f"array '{key}' {problem}; input '{input_name}' of function '{name}' is {value.dtype}")
        picked[input_name] = array.astype(value.dtype)
    return picked


def _unrepresentable(array, dtype):
    """Why `array` cannot become an input of integer or bool `dtype` unchanged, or None. A cast would truncate
    0.5 to 0, wrap 2^40 around, or make 2 True: token ids or a mask changed silently (floats convert to any
    float dtype by rounding, as the model's own input would)."""
    if dtype.kind not in "iub" or array.size == 0:
        return None
    if array.dtype.kind == "f" and not np.array_equal(array, np.trunc(array)):
        return f"holds non-integer values (e.g. {_show(array[array != np.trunc(array)].flat[0])})"
    if dtype.kind == "b":
        if array.dtype.kind != "b" and not np.isin(array, (0, 1)).all():
            return f"holds values other than 0 and 1 (e.g. {_show(array[~np.isin(array, (0, 1))].flat[0])})"
        return None
    info = np.iinfo(dtype)
    low, high = array.min(), array.max()
    if low < info.min or high > info.max:
        return f"holds {_show(low if low < info.min else high)}, beyond the range of {dtype} ({info.min} to {info.max})"
    return None


def _show(number):
    """A number of an array as the user wrote it: integers whole, floats short."""
    return f"{number:g}" if np.asarray(number).dtype.kind == "f" else str(int(number))


PARTICIPLE = {"verify": "verified", "audit": "audited"}
MAX_SCALE = 1e30  # random float inputs are drawn with this standard deviation at most: beyond, float32 draws overflow


def check_run_options(seed, scale, accumulate, accumulators):
    """BadInputError for a run option `verify` and `audit` share that no run could use."""
    if accumulate not in accumulators:
        raise BadInputError("--accumulate", f"{accumulate!r}: expected one of {', '.join(accumulators)}")
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and 0 < scale <= MAX_SCALE):
        raise BadInputError("--scale", f"{scale!r}: the inputs' standard deviation must be a positive number up to {MAX_SCALE:g}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise BadInputError("--seed", f"{seed!r}: expected an integer >= 0")


def check_given_names(given, spec, path):
    """BadInputError for an array of an --inputs file that names no input of the model (`input` or
    `function/input`): a misspelt key would otherwise leave that input random, silently."""
    known = {i.name for f in spec.mlProgram.functions.values() for i in f.inputs}
    known |= {f"{name}/{i.name}" for name, f in spec.mlProgram.functions.items() for i in f.inputs}
    unknown = sorted(set(given) - known)
    if unknown:
        inputs = ", ".join(sorted({i.name for f in spec.mlProgram.functions.values() for i in f.inputs})) or "none"
        raise BadInputError(path, f"array '{unknown[0]}' names no input of the model (its inputs: {inputs})")


def function_feeds(package_path, spec, name, view, seed, scale, given, inputs_path, command="verify"):
    """({input: array}, [note]) for function `name`: seeded random inputs, the user's arrays where `given` (from
    `load_npz(inputs_path)`) names them, and a note per input that is not a float drawn with --scale."""
    function = view.function
    try:
        feeds, ranges = random_inputs(spec, function, np.random.default_rng(seed), scale, with_ranges=True, view=view)
    except InputTooLarge as e:
        raise CannotVerify(package_path, f"cannot be {PARTICIPLE[command]}: function '{name}': {e}") from None
    feeds.update(given_for(given, function, name, feeds, inputs_path))
    from_file = [i for i in feeds if i in given or f"{name}/{i}" in given]
    notes = [f"function '{name}' input '{i}': {text}" for i, text in ranges.items() if i not in from_file]
    notes += [f"function '{name}' input '{i}': from {inputs_path} (--seed and --scale do not apply)" for i in from_file]
    return feeds, notes


def check_declared_sizes(package_path, view, command="verify"):
    """CannotVerify if a computed value declares more than MAX_VALUE_ELEMENTS elements: memory stays bounded
    whatever the shapes say (constants are not counted: weights are views into weight.bin's memory map)."""
    for op in view.ops():
        if op.type == "const":
            continue
        for out in op.outputs:
            count = element_count(out.type.tensorType) if out.type.WhichOneof("type") == "tensorType" else None
            if count is not None and count > MAX_VALUE_ELEMENTS:
                raise CannotVerify(
                    package_path,
                    f"cannot be {PARTICIPLE[command]}: function '{view.name}': op '{op_name(op)}' ({op.type}) declares "
                    f"{count} elements, more than {command}'s budget of {MAX_VALUE_ELEMENTS} per value",
                )
