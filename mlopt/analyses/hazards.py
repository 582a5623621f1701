"""Static fp16 hazards: what a program's stored constants do to an fp16 device, found without running anything.

- An fp16 constant holding inf or NaN, unless it is only a bound that changes nothing (clip's beta = inf, the
  `clamp(min=eps)` of OpenELM's fp16 RMSNorm workaround). Converting at FLOAT16 precision stores a mask sentinel (float32's minimum,
  -1e9, -inf) as fp16 -inf: fp16 cannot hold a finite value beyond +-65504 (IEEE 754 binary16). A softmax row
  that such a mask covers entirely computes -inf - (-inf) = NaN, and -inf * 0 is NaN (IEEE 754), where the fp32
  model gave a finite answer (apple/coremltools pull request #2669; huggingface/transformers pull request 17306).
- Not one that only decides a condition: a select branch whose result is only cast to bool (transformers'
  AttentionMaskConverter fills the inverted padding mask with the sentinel and casts that to bool for the next
  masked_fill): -inf and a finite fill give the same bool, so the -inf computes nothing.
- An fp32 constant beyond fp16's range that an fp16 path casts down (a `cast` to fp16 within CAST_HOPS ops of
  fp32 arithmetic): on the fp16 side it is +-inf, whatever it was meant to be.

Constants are read one at a time (a weight-file blob into memory of its own, then dropped): memory follows the
largest constant, not the model.
"""

import numpy as np

from ..graph.dtypes import BOOL, FLOAT16, FLOAT32, NUMPY
from ..graph.values import decode_value, tensor_shape
from .audit_report import FP16_MAX, Finding

CAST_HOPS = 8  # fp32 ops between a constant and the cast to fp16 that takes it down (a mask built with add/mul/select)
F32_MIN = float(np.finfo(np.float32).min)


def static_hazards(view, blobs):
    """Findings (kind "static") for the constants of `view`'s main block, in program order."""
    findings = []
    for op in view.main.operations:
        if op.type != "const" or not op.outputs or "val" not in op.attributes:
            continue
        value_type = op.outputs[0].type
        if value_type.WhichOneof("type") != "tensorType" or value_type.tensorType.dataType not in (FLOAT16, FLOAT32):
            continue
        dtype = value_type.tensorType.dataType
        array = _read(op.attributes["val"], blobs)
        if array is None:
            continue
        name = op.outputs[0].name
        if dtype == FLOAT16:
            harmless = _only_bounds(view, name, array) or _only_decides_conditions(view, name, array)
            detail = None if harmless else _fp16_problem(array)
        else:
            cast = _fp16_cast_of(view, name) if _beyond_fp16(array) else None
            detail = _fp32_problem(array, cast) if cast else None
        if detail:
            findings.append(Finding("static", name, "const", detail, view.name, view.position(op)))
    return findings


def _read(value, blobs):
    """The constant's values as stored (a copy for a weight-file blob), or None if they cannot be read here."""
    kind = value.WhichOneof("value")
    if kind == "blobFileValue":
        shape = tensor_shape(value.type)
        if blobs is None or shape is None:
            return None
        blob = value.blobFileValue
        return blobs.read(blob.fileName, blob.offset, NUMPY[value.type.tensorType.dataType], shape, copy=True)
    return decode_value(value)


def _fp16_problem(array):
    flat = np.ascontiguousarray(array, np.float16).reshape(-1)
    special = (flat.view(np.uint16) & 0x7C00) == 0x7C00  # exponent all ones: inf or NaN, without converting
    if not special.any():
        return None
    values = flat[special]
    nan, pos, neg = int(np.isnan(values).sum()), int((values == np.inf).sum()), int((values == -np.inf).sum())
    parts = [f"{n} {label}" for n, label in ((neg, "-inf"), (pos, "+inf"), (nan, "NaN")) if n]
    held = ", ".join(parts)
    if nan:
        return f"fp16 constant holds {held}: every value computed from those elements is NaN on the device"
    return (f"fp16 constant holds {held} (a mask sentinel such as float32's minimum, -1e9 or -inf becomes -inf in "
            f"fp16): a softmax row it masks entirely gives NaN (-inf - -inf), and -inf * 0 is NaN")


def _only_bounds(view, name, array):
    """True if every use of the constant is a bound that leaves values alone: `clip`'s alpha/beta (torch's
    clamp(min=eps) converts to clip(beta=inf)), `maximum` with -inf, `minimum` with +inf. Such an inf computes
    nothing."""
    values = np.asarray(array, np.float16)
    if np.isnan(values).any():
        return False
    uses = view.consumers(name)
    for use in uses:
        op = use.op
        if op is None:
            return False
        if op.type == "clip" and use.param in ("alpha", "beta"):
            continue
        if op.type == "maximum" and np.all(values == -np.inf) or op.type == "minimum" and np.all(values == np.inf):
            continue
        return False
    return bool(uses)


def _only_decides_conditions(view, name, array):
    """True if the constant holds no NaN and every use is a branch (a or b) of a select whose result only casts to
    bool read: an infinite fill there gives the same True as a finite one."""
    if np.isnan(np.asarray(array, np.float32)).any():
        return False
    uses = view.consumers(name)
    for use in uses:
        if use.op is None or use.op.type != "select" or use.param not in ("a", "b"):
            return False
        readers = view.consumers(use.op.outputs[0].name)
        if not readers or any(r.op is None or r.op.type != "cast" or r.op.outputs[0].type.tensorType.dataType != BOOL
                              for r in readers):
            return False
    return bool(uses)


def _beyond_fp16(array):
    with np.errstate(all="ignore"):
        return bool(np.any(np.abs(np.asarray(array, np.float32)) > FP16_MAX))


def _fp32_problem(array, cast):
    a = np.asarray(array, np.float32)
    with np.errstate(all="ignore"):
        extreme = float(a.reshape(-1)[np.argmax(np.abs(a))])
    count = int(np.sum(np.abs(a) > FP16_MAX))
    what = "float32's minimum" if extreme == F32_MIN else "float32's maximum" if extreme == -F32_MIN else f"{extreme:g}"
    with np.errstate(all="ignore"):
        beyond = a[np.abs(a) > FP16_MAX]
    becomes = "-inf" if np.all(beyond < 0) else "inf" if np.all(beyond > 0) else "+-inf"
    return (f"fp32 constant holds {count} value{'s' * (count != 1)} beyond fp16's range +-65504 (up to {what}); "
            f"cast to fp16 at '{cast}' {'it becomes' if count == 1 else 'they become'} {becomes}")


def _fp16_cast_of(view, value):
    """Name of the first cast to fp16 `value` reaches through at most CAST_HOPS ops of fp32 arithmetic, or None."""
    frontier, seen = [value], {value}
    for _ in range(CAST_HOPS):
        following = []
        for name in frontier:
            for use in view.consumers(name):
                op = use.op
                if op is None or not op.outputs:
                    continue
                out = op.outputs[0]
                out_dtype = out.type.tensorType.dataType if out.type.WhichOneof("type") == "tensorType" else None
                if op.type == "cast" and out_dtype == FLOAT16:
                    return out.name
                if out_dtype == FLOAT32 and out.name not in seen:
                    seen.add(out.name)
                    following.append(out.name)
        frontier = following
    return None
