"""fp16_headroom: a residual stream scaled by a power of two alpha, so that fp16 keeps headroom (docs/headroom.md).

    s_k = add(s_k-1, c_k)  ->  every s_k times alpha = 2^-k:
      each value entering the stream times alpha (folded into a linear's weight and bias, a matmul's or mul's
      constant - the LUT or scale of a compressed weight - or a mul by alpha inserted where the add reads it),
      each norm reading the stream with epsilon times alpha^2 (norm(alpha x, alpha^2 eps) = norm(x, eps); an
      epsilon added to a standard deviation, x / (std + eps), times alpha: the summary says which moved how)

The stream and its readers are found by fp16_headroom_stream.py. alpha is the largest power of two (at most 1)
that brings the float64 peak of every stream value to `target_bits` bits below fp16's 65504; the peaks are the
audit's (analyses/audit.py, on the user's inputs), measured by the layer that runs the audit and handed to the
rule (`Fp16HeadroomRule(peaks=..., target_bits=2)`): rules do not run analyses. The rule is opt-in (`mlopt
optimize --headroom`), never in the default registry.

Exactness: a power of two scales every normal float exactly, and norms read the scaled stream unchanged, so the
rewrite in float64 equals the original in float64 (the EXACT proof, judged at every norm reading the stream,
with every value the region reads fed independently). Two things can round: alpha^2 * eps where the program's
dtype cannot hold it (an fp16 eps of 1e-6 is subnormal already: it loses bits), and weights whose scaled values
fall below the dtype's normal range. The rule then stores the nearest value, says so in the note, and proves the
rewrite with the ROUNDED proof (the float64 comparison within the dtype's tolerance): the nearest eps differs
from alpha^2 * eps by at most half a subnormal step of the dtype; one that would round to 0 is stored as the
dtype's smallest subnormal (an all-zero row then still gives 0, not 0/0). An fp16 eps below 2^-14 (1e-6 is) is
a subnormal, which a device that flushes subnormals (the audit's model) adds as 0 already.
"""

import math

import numpy as np

from ..graph.dtypes import FLOAT16, NUMPY, name as dtype_name
from ..graph.values import decode_value
from ..patterns.status import NOT_THIS_PATTERN, ConditionFailed, Matched, Recognised
from ..rewrites.compressed_scaling import SCALED_PARAM, held_param
from .base import EXACT, ROUNDED, LoweringFailed, Match, Rule, Site
from .fp16_headroom_stream import norm_readers, starts_stream, walk_stream

FP16_MAX = 65504.0
DEFAULT_TARGET_BITS = 2


class Fp16HeadroomRule(Rule):
    name = "fp16_headroom"
    title = "ResidualStream"
    description = "a residual stream scaled by a power of two so that fp16 keeps headroom (opt-in: --headroom)"
    looks_for = "residual stream (adds read only by norms)"
    anchors = ("add",)
    proof = EXACT
    magnitudes = (1.0,)  # the rewrite is linear in every fed value: one magnitude tells whether constants moved right
    units = None  # fp16 overflow is a matter of every compute unit that computes in fp16
    saved_programs_only = True  # one match, many sites: no fused op at conversion time

    def __init__(self, peaks=None, target_bits=DEFAULT_TARGET_BITS):
        """`peaks`: {function name: {value name: float64 peak |x|, NaN where float64 itself held NaN}} (the
        audit's rows); `target_bits`: the bits of headroom below 65504 the stream's peak must leave."""
        if isinstance(target_bits, bool) or not isinstance(target_bits, (int, float)) or not 0 <= target_bits <= 15:
            raise ValueError(f"headroom target {target_bits!r}: expected a number of bits from 0 to 15")
        self.peaks = peaks
        self.target_bits = target_bits
        self._readers = (None, None)  # (view, its norm readers): computed once per function

    def _norm_readers(self, graph):
        if self._readers[0] is not graph:
            self._readers = (graph, norm_readers(graph))
        return self._readers[1]

    def match(self, graph, op):
        if not starts_stream(graph, op):
            return NOT_THIS_PATTERN
        readers = self._norm_readers(graph)
        stream = walk_stream(graph, op, readers)
        if not stream.readers and not any(e.readers for e in stream.entries):
            return NOT_THIS_PATTERN  # adds nothing normalises (rotary embeddings, gates): no residual stream
        ops = _region_ops(graph, stream)
        adds, norms = len(stream.adds), len(_judged(stream))
        form = f"residual stream: {adds} add{'s' * (adds != 1)}, {norms} norm{'s' * (norms != 1)} reading it"
        name = f"'{stream.values[0]}' .. '{stream.values[-1]}'"
        if stream.problems:
            return ConditionFailed(f"stream {name} left alone: {stream.problems[0]}", form, ops)
        peak, missing = self._peak(graph, stream)
        if missing is not None:
            if graph.block(op) is not graph.main:  # the audit steps through the function's own ops only
                return ConditionFailed(f"stream {name} left alone: it lies inside the body of a cond or while_loop, "
                                       "whose values the audit does not measure", form, ops)
            return ConditionFailed(f"stream {name} left alone: the audit measured no float64 peak for '{missing}'", form, ops)
        if math.isnan(peak):
            unmeasured = next(v for v in self._scaled_values(stream) if math.isnan(self.peaks[graph.name][v]))
            return ConditionFailed(
                f"stream {name} left alone: float64 is NaN at '{unmeasured}' (the program as stored computes no number "
                f"there: mlopt audit says where it starts), so its peak is unmeasured", form, ops)
        limit = FP16_MAX / 2.0**self.target_bits
        if peak <= limit:
            return Recognised(self.title, (
                f"stream {name}: float64 peak {peak:.4g} leaves {_bits(peak):.1f} bits below 65504, at least the "
                f"target {self.target_bits:g}; alpha = 1, nothing to do"), form, ops)
        k = math.ceil(math.log2(peak / limit))
        alpha = 2.0**-k
        return Matched(self._match(graph, stream, ops, alpha, k, peak), form, ops)

    def _peak(self, graph, stream):
        """The largest float64 peak among the values the rewrite scales: the stream's and the folded entries'
        (an entry given a mul at the add keeps its own magnitude)."""
        peaks = (self.peaks or {}).get(graph.name, {})
        values = self._scaled_values(stream)
        for value in values:
            if value not in peaks:
                return None, value
        if any(math.isnan(peaks[v]) for v in values):  # NaN in float64 itself: not a measure
            return math.nan, None
        return max(peaks[v] for v in values), None

    @staticmethod
    def _scaled_values(stream):
        return stream.values + [e.value for e in stream.entries if e.fold is not None]

    def _match(self, graph, stream, ops, alpha, k, peak):
        sites, rounded, underflows = [], [], 0
        inserts = {}
        for e in stream.entries:
            if e.fold is None:
                inserts.setdefault(id(e.add), (e.add, []))[1].append(e.param)
                continue
            producer = graph.producer(e.value)
            sites.append(Site(producer, {"scale": {p: graph.arg(producer, p) for p in e.fold}, "factor": alpha}))
            underflows += sum(_underflows(graph, graph.arg(producer, p), alpha) for p in e.fold)
        for add, params in inserts.values():
            sites.append(Site(add, {"insert": tuple(params), "factor": alpha}))
        moved = set()  # a norm read both directly and through a cast moves its epsilon once
        for reader in _readers(stream):
            for op, param, power in reader.eps:
                if id(op) in moved:
                    continue
                moved.add(id(op))
                value, dtype = _literal(graph, op, param)
                scaled = _scaled_epsilon(value, alpha**power, NUMPY[dtype])
                if not np.array_equal(scaled.astype(np.float64), value.astype(np.float64) * alpha**power):
                    rounded.append((float(value.reshape(-1)[0]), float(scaled.reshape(-1)[0]), dtype, alpha**power))
                sites.append(Site(op, {"epsilon": (param, scaled, dtype)}))
        sites.sort(key=lambda s: graph.position(s.op))
        first = sites[0].op
        stream_dtype = graph.dtype(stream.values[-1])
        note = _note(alpha, rounded, underflows, stream_dtype)
        squaring = _squares_past_fp16(graph, _readers(stream), peak * alpha)
        if squaring:
            note += (f"; {squaring} RMSNorm chain{'s' * (squaring != 1)} reading it square{'s' * (squaring == 1)} it in "
                     f"fp16 as written: x^2 passes 65504 once |x| > 256, and the peak is {peak * alpha:.4g} after "
                     f"scaling, so {'it still overflows' if squaring == 1 else 'they still overflow'} unless the "
                     f"rms_norm rule rewrites {'it' if squaring == 1 else 'them'} (compute units CPU_AND_NE)")
        return Match(
            x=stream.entries[0].value,
            axes=(),
            output=stream.values[-1],  # what the report names: the stream's last value (its sites are `sites`)
            output_op=first,
            ops=ops,
            dtype=stream_dtype,
            facts={"stream": list(stream.values), "alpha_log2": -k, "peak_before": peak, "peak_after": peak * alpha,
                   "adds": len(stream.adds), "folded": sum(e.fold is not None for e in stream.entries),
                   "inserted": sum(e.fold is None for e in stream.entries), "readers": len(_readers(stream)),
                   "eps_powers": _epsilon_powers(_readers(stream)),
                   "eps_rounded": len(rounded), "underflows": underflows},
            note=note,
            judged_at=tuple(_judged(stream)),
            sites=tuple(sites),
            proof=ROUNDED if rounded or underflows else None,
        )

    def lower(self, b, fused):
        site = fused.site
        if site is None:
            raise ValueError("the fp16_headroom rule lowers one site at a time (Match.sites)")
        data, out = site.data, site.op.outputs[0].name
        if "scale" in data:
            try:
                return b.same_op(out, **{p: b.scaled_constant(v, data["factor"]) for p, v in data["scale"].items()})
            except LoweringFailed:  # no weight file to write (the in-memory API): the op as it was, times alpha
                return b.mul(b.same_op(out), b.const(np.float64(data["factor"]), b.dtype(out)))
        if "insert" in data:
            add = {p: b.mul(_arg(site.op, p), b.const(np.float64(data["factor"]), b.dtype(_arg(site.op, p)))) for p in data["insert"]}
            return b.same_op(out, **add)
        param, scaled, dtype = data["epsilon"]
        return b.same_op(out, **{param: b.const(scaled, dtype)})

    def summary(self, match):
        f = match.facts
        return (f"stream '{f['stream'][0]}' .. '{f['stream'][-1]}' ({f['adds']} add{'s' * (f['adds'] != 1)}), alpha 2^{f['alpha_log2']}, "
                f"float64 peak {f['peak_before']:.4g} -> {f['peak_after']:.4g} ({_bits(f['peak_before']):.1f} -> "
                f"{_bits(f['peak_after']):.1f} bits below 65504); {f['folded']} entr{'y' if f['folded'] == 1 else 'ies'} folded into their "
                f"constants, {f['inserted']} scaled by an inserted mul, {_epsilon_text(f['eps_powers'], f['alpha_log2'])}")

    def report_fields(self, match):
        f = match.facts
        return {"stream_first": f["stream"][0], "stream_last": f["stream"][-1], "adds": f["adds"], "alpha": 2.0**f["alpha_log2"], "peak_before": f["peak_before"],
                "peak_after": f["peak_after"], "entries_folded": f["folded"], "entries_inserted": f["inserted"],
                "norm_readers": f["readers"], "eps_rounded": f["eps_rounded"], "weights_underflowed": f["underflows"]}


def _epsilon_powers(readers):
    """[(powers, count)]: how many norm readers move their epsilon by alpha^p for each set of powers p (2: under
    the root, 1: added to a standard deviation; none: a norm without an epsilon), highest power first."""
    counts = {}
    for reader in readers:
        key = tuple(sorted({power for _, _, power in reader.eps}, reverse=True))
        counts[key] = counts.get(key, 0) + 1
    return sorted(counts.items(), key=lambda item: [-p for p in item[0]] + [0])


def _epsilon_text(groups, alpha_log2):
    """'7 norms with epsilon x 2^-6', or per kind: '6 norms with epsilon x 2^-6, 1 with epsilon x 2^-3'."""
    parts = []
    for powers, count in groups:
        factors = " and ".join(f"2^{p * alpha_log2}" for p in powers)
        moved = f"with epsilon{'s' * (len(powers) > 1)} x {factors}" if powers else "without an epsilon"
        noun = f" norm{'s' * (count != 1)}" if not parts else ""
        parts.append(f"{count}{noun} {moved}")
    return ", ".join(parts)


def _bits(peak):
    return math.log2(FP16_MAX / peak) if peak > 0 else math.inf


SQUARE_LIMIT = math.sqrt(65504.0)  # |x| beyond it: x^2 is beyond fp16's largest finite value


def _squares_past_fp16(graph, readers, peak):
    """How many decomposed RMSNorm readers square the (scaled) stream in fp16 where x^2 still overflows: scaling
    the stream to `peak` leaves their x^2 beyond 65504 while peak > 256 (docs/headroom.md, "With the norm rules")."""
    if peak <= SQUARE_LIMIT:
        return 0
    count = 0
    for reader in readers:
        if reader.kind != "RMSNorm":
            continue
        ops = [graph.op_by_name.get(name) for name in reader.ops]
        if any(op is not None and _squares(graph, op) and graph.dtype(graph.output(op)) == FLOAT16 for op in ops):
            count += 1
    return count


def _squares(graph, op):
    kind = graph.op_type(op)
    if kind in ("square", "reduce_sum_square"):
        return True
    if kind == "mul":
        return graph.arg(op, "x") is not None and graph.arg(op, "x") == graph.arg(op, "y")
    return kind == "pow"  # the rms_norm rule matched it: a pow in its chain is the square


def _readers(stream):
    """Every norm whose input the rewrite scales: the stream's readers and those of folded entries."""
    readers = list(stream.readers)
    for e in stream.entries:
        readers += [r for r in e.readers if r not in readers]
    return readers


def _judged(stream):
    return [r.output for r in _readers(stream)]


def _region_ops(graph, stream):
    """Names of the ops the proof's region covers: the adds, folded entries' producers, the norms reading a
    scaled value - in program order."""
    ops = list(stream.adds)
    ops += [graph.producer(e.value) for e in stream.entries if e.fold is not None]
    names = {graph.op_name(op) for op in ops}
    for r in _readers(stream):
        names.update(r.ops)
    order = {graph.op_name(op): graph.position(op) for op in ops}
    by_position = sorted(names, key=lambda n: order.get(n, _position(graph, n)))
    return tuple(by_position)


def _position(graph, name):
    op = graph.op_by_name.get(name)
    return graph.position(op) if op is not None else -1


def _arg(op, param):
    return op.inputs[param].arguments[0].name


def _literal(graph, op, param):
    """The epsilon bound to `param` of `op` (a const op's value or an inline literal) and its dtype."""
    binding = op.inputs[param].arguments[0]
    if binding.WhichOneof("binding") == "value":
        return np.asarray(decode_value(binding.value)), binding.value.type.tensorType.dataType
    return np.asarray(graph.const_value(binding.name)), graph.dtype(binding.name)


def _scaled_epsilon(value, factor, np_dtype):
    """eps * factor in the epsilon's dtype, rounded to nearest; an epsilon that would round to 0 keeps the dtype's
    smallest subnormal instead, so that an all-zero row still divides 0 by a finite root (0, as the original
    gives) rather than by 0 (NaN)."""
    with np.errstate(all="ignore"):
        scaled = (value.astype(np.float64) * factor).astype(np_dtype)
    tiny = np.finfo(np_dtype).smallest_subnormal
    return np.where((value > 0) & (scaled == 0), tiny, scaled).astype(np_dtype)


def _underflows(graph, value, alpha):
    """Elements of the constant `value` (or of a compressed weight's LUT/scale) that `alpha` does not scale
    exactly: scaled below the dtype's normal range, they lose bits or become 0."""
    chunks = graph.const_chunks(value)
    dtype = graph.dtype(value)
    if chunks is None:
        producer = graph.producer(value)
        held = held_param(producer, SCALED_PARAM[graph.op_type(producer)]) if producer is not None and graph.op_type(producer) in SCALED_PARAM else None
        if held is None:
            return 0
        if held.WhichOneof("value") == "blobFileValue":
            if graph.stored is None:
                return 0
            chunks = graph.stored.chunks(held, None)
        else:
            chunks = [np.asarray(decode_value(held)).reshape(-1)]
        dtype = held.type.tensorType.dataType
    np_dtype = NUMPY[dtype]
    count = 0
    with np.errstate(all="ignore"):
        for chunk in chunks:
            exact = np.asarray(chunk, np.float64) * alpha
            count += int(np.count_nonzero(exact.astype(np_dtype).astype(np.float64) != exact))
    return count


def _note(alpha, rounded, underflows, dtype):
    parts = [f"every value of the stream is multiplied by {alpha:g}; norms read it unchanged"]
    if rounded:
        before, after, eps_dtype, factor = rounded[0]
        exact = before * factor
        floor = after == float(np.finfo(NUMPY[eps_dtype]).smallest_subnormal) and exact < after / 2
        stored = (f"stored {after:.4g}, the smallest {dtype_name(eps_dtype)} subnormal, as 0 would make an all-zero "
                  f"row NaN") if floor else f"nearest {after:.4g}"
        parts.append(
            f"{len(rounded)} epsilon{'s' * (len(rounded) != 1)} cannot hold eps x {factor:g} exactly in "
            f"{dtype_name(eps_dtype)} (e.g. {before:.4g} x {factor:g} = {exact:.4g} -> {stored}): stored rounded, "
            f"proved against float64 within {dtype_name(dtype)} tolerance, not bit-exact")
    if underflows:
        parts.append(f"{underflows} weight element{'s' * (underflows != 1)} underflow{'s' * (underflows == 1)} "
                     f"when scaled (below the dtype's normal range): proved within tolerance, not bit-exact")
    return "; ".join(parts)
