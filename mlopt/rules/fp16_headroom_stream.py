"""The residual-stream pattern of the fp16_headroom rule: a chain of adds, what enters it, and who reads it.

    s_0 = source                       (an embedding gather times sqrt(hidden), or any value)
    s_1 = add(s_0, c_1)                c_k: a block's contribution
    s_k = add(s_k-1, c_k)              ...
    readers of every s_k: scale-invariant norms (an RMSNorm or LayerNorm chain, a native layer_norm, the
    LayerNorm trick layer_norm(concat([x, -x]))) or the next add of the stream

Scaling every s_k by alpha needs every value entering the stream (s_0 and each c_k, the "entries") times alpha,
and each reader's epsilon times alpha^2 (norm(alpha x, alpha^2 eps) = norm(x, eps)). An entry produced by an op
whose output scales with one constant (linear, matmul or conv with a constant weight [and bias], a mul by a
constant such as Gemma's post-norm gamma) and read by nothing but the stream and norms is folded: that constant
is scaled. Any other entry gets a mul by alpha inserted where the add reads it (its other readers see it as it
was). A reader of the stream that is none of the above (a head reading the stream directly, an add of a bias)
leaves the stream alone: `walk_stream` says why.

Norm chains are found by the norm rules' own matchers (rms_norm_pattern.py, layer_norm_pattern.py), in raw and
rewritten (trick) form; their epsilon-carrying ops are found here (`epsilon_sites`).
"""

from dataclasses import dataclass, field, replace

from ..graph.dtypes import FLOATS
from ..patterns.norm import REDUCTIONS
from ..patterns.status import Matched, Recognised
from ..patterns.walk import producer_through_casts
from ..rewrites.compressed_scaling import SCALED_PARAM, held_param
from .layer_norm_pattern import match_layer_norm
from .rms_norm_pattern import TRICK_KIND, match_rms_norm

ROOTS = ("rsqrt", "sqrt", "pow", "real_div", "inverse")  # what an epsilon add feeds in a norm chain


@dataclass
class Reader:
    """A norm chain reading a stream value: its ops, its output (where the proof judges it), its epsilon sites
    [(op, param)], or why it cannot be kept invariant (`unsupported`)."""

    kind: str
    x: str
    ops: tuple
    output: str
    eps: list = field(default_factory=list)
    unsupported: str = None


@dataclass
class Entry:
    """A value entering the stream at an add: folded into its producer's constants (`fold`: params to scale), or
    given a mul by alpha at the add (`fold` None)."""

    value: str
    add: object
    param: str  # the add's input reading it
    fold: tuple = None
    readers: tuple = ()  # norm readers of a folded entry (their epsilon moves too)


@dataclass
class Stream:
    values: list  # s_0 (when folded) .. s_n: every value that carries the stream
    adds: list
    entries: list
    readers: list
    problems: list  # why the stream cannot be scaled (empty: it can)


def norm_readers(view):
    """Every norm chain of the function, by the value it normalises: {x: [Reader]} (computed once per view)."""
    found = {}
    by_name = {view.op_name(op): op for op in view.ops()}
    for op in view.ops():
        kind = view.op_type(op)
        statuses = []
        if kind in REDUCTIONS:
            statuses = [("RMSNorm", match_rms_norm(view, op)), ("LayerNorm", match_layer_norm(view, op))]
        elif kind == "layer_norm":
            statuses = [("LayerNorm trick", match_rms_norm(view, op))]  # the trick, recognised
        for title, status in statuses:
            reader = _reader(view, op, title, status, by_name)
            if reader is not None:
                found.setdefault(reader.x, []).append(reader)
                break
        else:
            if kind == "layer_norm" and view.arg(op, "x") is not None:
                reader = Reader("layer_norm", view.arg(op, "x"), (view.op_name(op),), view.output(op))
                reader.eps = epsilon_sites(view, [op])
                found.setdefault(reader.x, []).append(reader)
    return found


def _reader(view, anchor, title, status, by_name):
    ops = [by_name[n] for n in status.ops] if isinstance(status, (Matched, Recognised)) else []
    if isinstance(status, Matched):
        m = status.match
        reader = Reader(title, m.x, tuple(status.ops), m.output)
        if m.facts.get("max_scaled"):
            reader.unsupported = "a max|x| pre-scaled RMSNorm (its epsilon does not scale with x^2)"
        reader.eps = epsilon_sites(view, ops)
        return reader
    if isinstance(status, Recognised) and status.kind == TRICK_KIND:
        concat = producer_through_casts(view, view.arg(anchor, "x"))
        x = view.args(concat, "values")[0]
        last = max(ops, key=view.position)
        reader = Reader(title, x, tuple(status.ops), view.output(last))
        reader.eps = epsilon_sites(view, ops)
        return reader
    return None


def epsilon_sites(view, ops):
    """(op, param, power) of every epsilon in a norm chain's ops, moved by alpha^power: layer_norm's and rsqrt's
    `epsilon` and an add of a constant that feeds the root (mean of squares + eps) by alpha^2; an add of a
    constant to a square root (x / (std + eps), as the Annotated Transformer's LayerNorm) by alpha."""
    sites = []
    for op in ops:
        kind = view.op_type(op)
        if kind in ("layer_norm", "rsqrt") and view.has_input(op, "epsilon"):
            sites.append((op, "epsilon", 2))
        elif kind == "add":
            const = [p for p in ("x", "y") if view.const(op, p) is not None]
            if len(const) != 1:
                continue
            other = producer_through_casts(view, view.arg(op, "y" if const[0] == "x" else "x"))
            if other is not None and view.op_type(other) == "sqrt":
                sites.append((op, const[0], 1))
            elif _feeds_root(view, view.output(op)):
                sites.append((op, const[0], 2))
    return sites


def _feeds_root(view, value, depth=4):
    for use in view.consumers(value):
        if use.op is None:
            continue
        kind = view.op_type(use.op)
        if kind in ROOTS:
            return True
        if kind == "cast" and depth and _feeds_root(view, view.output(use.op), depth - 1):
            return True
    return False


def is_stream_add(view, op):
    """An add of two values that are not constant: what a residual stream is made of."""
    if view.op_type(op) != "add":
        return False
    x, y = view.arg(op, "x"), view.arg(op, "y")
    return (x is not None and y is not None and view.is_float_tensor(view.output(op))
            and not view.is_constant_expr(x) and not view.is_constant_expr(y))


def starts_stream(view, op):
    """A stream add whose inputs no stream add produces: where a residual stream begins."""
    if not is_stream_add(view, op):
        return False
    return not any((p := view.producer(view.arg(op, q))) is not None and is_stream_add(view, p) for q in ("x", "y"))


def walk_stream(view, start, readers):
    """The stream that begins at the add `start`, its entries and readers, and what keeps it from being scaled."""
    stream = Stream(values=[], adds=[], entries=[], readers=[], problems=[])
    pending = [(p, view.arg(start, p)) for p in ("x", "y")]
    add, seen = start, set()
    while add is not None and id(add) not in seen:
        seen.add(id(add))
        stream.adds.append(add)
        for param, value in pending:
            stream.entries.append(_entry(view, value, add, param, readers, stream))
        value = view.output(add)
        stream.values.append(value)
        add, pending = None, []
        following = []
        for use in view.consumers(value):
            if use.op is None:
                stream.problems.append(f"the stream value '{value}' is an output of the program (not scale-invariant)")
            elif is_stream_add(view, use.op) and view.arg(use.op, use.param) == value and _other(view, use.op, use.param) != value:
                following.append(use)
        if len(following) > 1:
            stream.problems.append(f"the stream forks: '{value}' feeds {len(following)} adds")
            following = []
        if following:
            add = following[0].op
            pending = [(p, view.arg(add, p)) for p in ("x", "y") if p != following[0].param]
        _check_readers(view, value, readers, stream, allowed={id(add)} if add is not None else set())
    return stream


def _other(view, op, param):
    return view.arg(op, "y" if param == "x" else "x")


def readers_of(view, value, readers):
    """The norm chains reading `value`, directly or through a cast (a mixed-precision program's fp32 stream read by
    an fp16 norm: a power of two passes a cast exactly), and the names of the ops they cover (those casts
    included)."""
    chains = list(readers.get(value, ()))
    covered = {name for r in chains for name in r.ops}
    for use in view.consumers(value):
        if use.op is not None and view.op_type(use.op) == "cast":
            through = readers.get(view.output(use.op), ())
            if through and len(view.consumers(view.output(use.op))) == sum(
                    view.op_name(u.op) in {n for r in through for n in r.ops} for u in view.consumers(view.output(use.op)) if u.op is not None):
                cast = view.op_name(use.op)
                chains += [replace(r, ops=(*r.ops, cast)) for r in through]
                covered |= {name for r in through for name in r.ops} | {cast}
    return chains, covered


def _check_readers(view, value, readers, stream, allowed):
    """Every consumer of a stream value is the next add or inside a norm chain that normalises it."""
    chains, covered = readers_of(view, value, readers)
    for use in view.consumers(value):
        if use.op is None or id(use.op) in allowed:
            continue
        if view.op_name(use.op) not in covered:
            stream.problems.append(
                f"the stream value '{value}' is read by {view.op_type(use.op)} '{view.op_name(use.op)}', which is not a "
                f"norm (only norms read a scaled stream unchanged)")
    for r in chains:
        if r.unsupported:
            stream.problems.append(f"the stream value '{value}' is read by {r.unsupported}")
        elif r not in stream.readers:
            stream.readers.append(r)


def _entry(view, value, add, param, readers, stream):
    """How `value` enters the stream at `add`: folded into its producer's constants when every other reader of it
    is a norm, else by a mul inserted at the add."""
    entry = Entry(value, add, param)
    producer = view.producer(value)
    fold = foldable(view, producer) if producer is not None else None
    if fold is None:
        return entry
    chains, covered = readers_of(view, value, readers)
    others = [u for u in view.consumers(value) if u.op is not add]
    if any(u.op is None or view.op_name(u.op) not in covered for u in others) or any(r.unsupported for r in chains):
        return entry
    entry.fold = fold
    entry.readers = tuple(r for r in chains if others)
    return entry


def foldable(view, op):
    """The params of `op` whose constants, scaled by alpha, scale its output by alpha: (param, ...), or None."""
    kind = view.op_type(op)
    if kind in ("linear", "conv"):
        params = [p for p in ("weight", "bias") if view.has_input(op, p)]
        if "weight" in params and all(scalable_constant(view, view.arg(op, p)) for p in params) \
                and not scalable_constant(view, view.arg(op, "x")):
            return tuple(params)
        return None
    if kind in ("matmul", "mul"):
        consts = [p for p in ("x", "y") if scalable_constant(view, view.arg(op, p))]
        if len(consts) == 1:
            return tuple(consts)
    return None


def scalable_constant(view, value):
    """A float constant the builder can scale in place: a const op, or a constexpr op's weight (scaled in its LUT
    or scale: rewrites/compressed_scaling.py)."""
    if value is None or view.dtype(value) not in FLOATS:
        return False
    if view.is_const(value):
        return True
    producer = view.producer(value)
    return (producer is not None and view.op_type(producer) in SCALED_PARAM
            and held_param(producer, SCALED_PARAM[view.op_type(producer)]) is not None)
