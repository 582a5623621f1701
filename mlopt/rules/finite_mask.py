"""finite_mask: an attention mask whose sentinel fp16 cannot hold, replaced by a finite one.

softmax(scores + M) with M a constant (possibly cast to the add's dtype) that holds -inf, or a value fp16 turns
into -inf (float32's minimum -3.4e38 from `torch.finfo(torch.float32).min`, -1e9 of older BERT/T5 code), or one
so close to fp16's limit that adding a negative score overflows (-65504): each such value becomes FILL.

Why FILL = -49152 (= -1.5 * 2**15, exact in fp16):

- masked probabilities stay exactly 0: softmax subtracts the row maximum m, and exp(FILL + s - m) is below fp16's
  smallest subnormal (2**-24, exp(-16.6)) for every score s < m + 49135; an overflow of FILL + s - m to -inf on the
  way (m above +16368) still gives exp(-inf) = 0, never NaN, because m itself is finite;
- the add cannot overflow: FILL + s reaches -65520 (where fp16 rounds to -inf) only for a score at or below -16368;
  with -65504 (fp16's minimum, what a clamp of float32's minimum to fp16 gives) it happens for any s < -16;
- a row masked entirely is uniform, as in the float32 source model (there -3.4e38 + s rounds to -3.4e38 for every
  score, so every entry is equal): in [-65504, -32768] fp16's spacing is 32, so FILL + s rounds back to FILL for
  every |s| < 16. -1e4 (Apple's ml-ane-transformers DistilBERT, `(1 - mask).float() * -1e4`) has spacing 8 there
  and absorbs only |s| < 4; the fp16 program with -inf gives NaN for such a row.

Where the sentinels come from (public code): float32's minimum from transformers' mask helpers
(https://github.com/huggingface/transformers/blob/main/src/transformers/modeling_attn_mask_utils.py, and
`get_extended_attention_mask` in modeling_utils.py), -inf from `torch.nn.Transformer.generate_square_subsequent_mask`
(https://github.com/pytorch/pytorch/blob/main/torch/nn/modules/transformer.py) and nanoGPT's `masked_fill`, -1e9
from harvardnlp's Annotated Transformer. Public code written for the Neural Engine uses -1e4 instead
(https://github.com/apple/ml-ane-transformers/blob/main/ane_transformers/huggingface/distilbert.py): finite in
fp16, left alone here, with the smaller absorption above. docs/rules.md ("Finite attention masks") has the table.

The proof (REGION, fed the program's own mask) compares the rewrite with the float32 source's meaning in float64:
every sentinel read as float32's minimum, so masked entries are exactly 0 and a fully masked row is uniform.

Masks that stack (docs/rules.md, "Masks that stack"): a `(1 - m) * sentinel` added to one other tensor before the
scores (T5's position bias) keeps FILL, one sentinel per path; added to a select that fills with a sentinel itself
(GPT-2's eager `where(causal, w, min) + mask`), both become STACKED_FILL = FILL / 2, so that the sum of the two is
FILL (2 * FILL would be -inf in fp16) and a key one mask drops keeps a margin of 40928 on its add.

A mask that every layer reads (one constant, one cast of it, one select computing it, or a `(1 - m) * sentinel`)
is one match: it replaces that value once, where it is shared (rules/finite_mask_shared.py), and is judged at
every softmax it reaches with that layer's own scores (`Match.readings`), so every layer keeps reading the one
rewritten value instead of getting a copy.
"""

import numpy as np

from ..graph.dtypes import FLOAT16
from ..patterns.attention_mask import LAYOUT, mask_readers, softmax_after
from ..patterns.status import NOT_THIS_PATTERN
from ..patterns.trace import attempt
from .base import INT, REGION, LoweringFailed, Match, Reading, Rule
from .finite_mask_pattern import FP16_MAX, const_through_casts, finite_sentinels, scan
from .finite_mask_shared import mask_readers as shared_readers, shared_point

FILL = -49152.0  # see the module docstring
STACKED_FILL = FILL / 2  # each of two sentinels that add up on one entry (docs/rules.md, "Stacked masks")
FLOAT32_MIN = float(np.finfo(np.float32).min)  # what a masked entry means in the float32 source model
FP16_LIMIT = FP16_MAX + 16  # fp16 rounds a value of magnitude 65520 or more to infinity
ADD, KEEP_WHERE_TRUE, KEEP_WHERE_FALSE, PRODUCT = 0, 1, 2, 3  # softmax(x + mask), softmax(select(c, x, m)),
# softmax(select(c, m, x)), softmax(x + (1 - m) * sentinel)
FILL_IN_A, FILL_IN_B = 4, 5  # softmax(x + select(c, sentinel, other)), softmax(x + select(c, other, sentinel)): a
# mask computed from the model's input (transformers' AttentionMaskConverter: masked_fill chains of the sentinel)
SHARED, SHARED_FILL_IN_A, SHARED_FILL_IN_B = 6, 7, 8  # one mask value several softmaxes read, replaced once where
# it is shared (rules/finite_mask_shared.py): a constant made finite, or the select computing it with finite branches;
# each softmax is judged with its own form (Match.readings)
FORMS = {ADD: "additive mask", KEEP_WHERE_TRUE: "select(cond, x, fill)", KEEP_WHERE_FALSE: "select(cond, fill, x)",
         PRODUCT: "(1 - m) * fill", FILL_IN_A: "x + select(cond, fill, m)", FILL_IN_B: "x + select(cond, m, fill)",
         SHARED: "shared mask", SHARED_FILL_IN_A: "shared select(cond, fill, m)", SHARED_FILL_IN_B: "shared select(cond, m, fill)"}
STACKED = 9  # select(cond, x, fill) + (1 - m) * fill: the select's fill constant made finite (STACKED_FILL)
FORMS[STACKED] = "select fill stacked with (1 - m) * fill"
SIDE_FORMS = {"add": ADD, "a": KEEP_WHERE_FALSE, "b": KEEP_WHERE_TRUE}  # how a MaskReader combines a shared mask


class FiniteMaskRule(Rule):
    name = "finite_mask"
    title = "MaskedSoftmax"
    description = "softmax(x + mask) with a sentinel fp16 cannot hold (-inf, float32's minimum, -1e9) -> a finite one"
    looks_for = "softmax of a sum with a constant -inf or float32-min mask"
    anchors = ("softmax", "mul", "const")  # mul: (1 - m) * sentinel; const: an infinite constant that is no mask
    operands = ("mask", "cond", "keep", "other", "bias")  # cond: the select's condition; keep: the (1 - m) a sentinel
    # multiplies; other: the second branch of a select computing the mask (FILL_IN_A/B); bias: a tensor a
    # (1 - m) * sentinel is added to before the scores (T5's position bias)
    params = ("fill", "form")  # form: one of FORMS
    param_types = {"form": INT}
    proof = REGION
    units = None  # only a constant changes: free with any compute units, and an fp16 program may run in fp16 on any
    axes_name = "softmax"

    def match(self, graph, op):
        if graph.op_type(op) == "const":
            return self._elsewhere(graph, op)
        if graph.op_type(op) == "mul":
            return self._product(graph, op)
        total = graph.arg(op, "x")
        combine, out_casts = _through_casts(graph, total)
        kind = graph.op_type(combine) if combine is not None else None
        if kind == "add":
            sides = [(graph.arg(combine, "x"), graph.arg(combine, "y"), ADD), (graph.arg(combine, "y"), graph.arg(combine, "x"), ADD)]
        elif kind == "select":
            a, b = graph.arg(combine, "a"), graph.arg(combine, "b")
            sides = [(a, b, KEEP_WHERE_TRUE), (b, a, KEEP_WHERE_FALSE)]
        else:
            return NOT_THIS_PATTERN
        found = [(x, mask_op, casts, form) for x, side, form in sides
                 for mask_op, casts in [const_through_casts(graph, side)] if mask_op is not None]
        if not found and kind == "add":
            return self._computed(graph, op, combine, out_casts, total)
        if len(found) != 1 or x_is_const(graph, found[0][0]):
            return NOT_THIS_PATTERN
        x, mask_op, casts, form = found[0]
        mask = graph.output(mask_op)
        cond = graph.arg(combine, "cond") if kind == "select" else None
        if graph.dtype(total) != FLOAT16:
            return NOT_THIS_PATTERN  # an fp32 softmax: its mask is the source model's own (no report line per layer)
        held = scan(graph, mask, FILL)
        if held is not None and not (held["sentinels"] or held["nan"] or held["pos_inf"]):
            return NOT_THIS_PATTERN  # a finite mask (-1e4, ALiBi): nothing fp16 breaks
        shared = self._shared(graph, op, mask_op, held)
        if shared is not None:
            return shared

        def body(trace):
            trace.take(combine, op, *casts, *out_casts)
            if held is None:
                trace.fail("its mask cannot be read")
            if held["nan"]:
                trace.recognise(self.title, f"its mask holds {held['nan']} NaN: no sentinel to replace")
            if held["pos_inf"]:
                trace.recognise(self.title, f"its mask holds {held['pos_inf']} +inf: not a mask sentinel")
            values = graph.const_value(mask)
            if values is None:
                trace.fail("its mask is too large to rewrite as an immediate constant (a stored mask is not rewritten yet)")
            axis = graph.const(op, "axis")
            axis = int(axis if axis is not None else -1) % graph.rank(total)
            return Match(x=x, axes=(axis,), output=graph.output(op), output_op=op, ops=trace.op_names(),
                         dtype=graph.dtype(total), operands={"mask": mask, "cond": cond}, params={"fill": FILL, "form": form},
                         note=mask_note(values, held["sentinels"], axis, graph.rank(total), form,
                                        graph.const_value(cond) if cond is not None else None))

        return attempt(graph, body)

    def _computed(self, graph, op, add, out_casts, total):
        """softmax(x + select(cond, sentinel, m)) (or the sentinel in b), the select possibly cast to x's dtype: a mask
        computed from the model's input, as transformers' AttentionMaskConverter builds it with masked_fill (and its
        `(1 - m)` cast to bool as the condition). In fp16 the sentinel is -inf and a row it masks entirely is NaN.
        Only the select's constant branches change; the proof feeds its condition as a keep/drop mask: from {0, 1}
        through the cast to bool that computes it, or as a bool the chain reads (numerics/proofs.py)."""
        found = []
        for x, side in ((graph.arg(add, "x"), graph.arg(add, "y")), (graph.arg(add, "y"), graph.arg(add, "x"))):
            select, casts = _through_casts(graph, side)
            if x is None or select is None or graph.op_type(select) != "select" or x_is_const(graph, x) or \
                    graph.is_constant_expr(graph.output(select)):
                continue
            branches = {p: graph.arg(select, p) for p in ("a", "b")}
            held = {p: scan(graph, v, FILL) if _is_const(graph, v) else None for p, v in branches.items()}
            if any(h is not None and h["sentinels"] for h in held.values()):
                found.append((x, select, casts, branches, held))
        if len(found) != 1 or graph.dtype(total) != FLOAT16:
            return NOT_THIS_PATTERN
        x, select, casts, branches, held = found[0]
        form = FILL_IN_A if held["a"] is not None and held["a"]["sentinels"] else FILL_IN_B
        mask, other = (branches["a"], branches["b"]) if form == FILL_IN_A else (branches["b"], branches["a"])
        cond = graph.arg(select, "cond")
        cond_op = graph.producer(cond) if cond is not None else None
        to_bool = cond_op is not None and graph.op_type(cond_op) == "cast" and graph.arg(cond_op, "x") is not None
        shared = self._shared(graph, op, select, held, computed=(form, mask, cond, other, cond_op if to_bool else None))
        if shared is not None:
            return shared

        def body(trace):
            trace.take(add, op, select, *casts, *out_casts, *([cond_op] if to_bool else []))
            for h in held.values():
                if h is not None and (h["nan"] or h["pos_inf"]):
                    trace.recognise(self.title, "a branch of the select computing its mask holds NaN or +inf: not a mask sentinel")
            if any(_is_const(graph, v) and graph.const_value(v) is None for v in branches.values()):
                trace.fail("its mask's select reads a constant too large to rewrite as an immediate constant")
            axis = graph.const(op, "axis")
            axis = int(axis if axis is not None else -1) % graph.rank(total)
            count = sum(h["sentinels"] for h in held.values() if h is not None)
            return Match(x=x, axes=(axis,), output=graph.output(op), output_op=op, ops=trace.op_names(),
                         dtype=graph.dtype(total), operands={"mask": mask, "cond": cond, "other": other},
                         params={"fill": FILL, "form": form}, binary=(graph.arg(cond_op, "x"),) if to_bool else (),
                         note=mask_note(None, count, axis, graph.rank(total), form))

        return attempt(graph, body)

    def _product(self, graph, op):
        """keep * sentinel, keep = 1 - m (transformers' `(1.0 - attention_mask) * torch.finfo(dtype).min`), reaching
        an add into a softmax through expand_dims/reshape/squeeze/casts. In fp16 the sentinel is -inf and
        0 * -inf = NaN at every position the mask keeps. The rewrite multiplies by FILL instead; the proof is judged
        at the softmax and feeds `keep` from {0, 1}: it assumes m holds only 0 and 1, as an attention mask does."""
        found = [(graph.arg(op, a), graph.arg(op, b)) for a, b in (("x", "y"), ("y", "x"))]
        found = [(keep, side) for keep, side in found if keep is not None and side is not None
                 and const_through_casts(graph, side)[0] is not None and not graph.is_constant_expr(keep)]
        if len(found) != 1:
            return NOT_THIS_PATTERN
        keep, side = found[0]
        sentinel_op, casts = const_through_casts(graph, side)
        sentinel = graph.output(sentinel_op)
        held = graph.const_value(sentinel)
        if held is None or np.size(held) != 1 or not float(np.asarray(held, np.float64).reshape(())) < FILL:
            return NOT_THIS_PATTERN
        producer = _through_casts(graph, keep)[0]
        if producer is None or graph.op_type(producer) != "sub" or graph.const(producer, "x") is None or \
                float(np.asarray(graph.const(producer, "x"), np.float64).reshape(-1)[0]) != 1.0:
            return NOT_THIS_PATTERN  # only (1 - m): a keep/drop mask
        ends, path, why = mask_readers(graph, graph.output(op))
        if why is not None and graph.dtype(graph.output(op)) == FLOAT16:
            return self._product_left_alone(graph, op, casts, why, float(np.asarray(held, np.float64).reshape(())))
        if why is not None or any(graph.dtype(graph.output(end.softmax)) != FLOAT16 for end in ends):
            return NOT_THIS_PATTERN
        out_casts = [o for end in ends for o in end.casts]
        scores = [graph.arg(end.add, "y") if graph.arg(end.add, "x") == end.value else graph.arg(end.add, "x") for end in ends]
        stacked = {id(end.stacked.add): end.stacked for end in ends if end.stacked is not None}
        # scores a select already filled with a sentinel (GPT-2's eager `where(causal, w, min) + mask`): two
        # sentinels stack on a key both in the future and padded, each made finite as STACKED_FILL (_stacked_fill)
        filled = sorted({why for x in scores for why in [stacked_sentinel(graph, x)] if why is not None})
        fill = STACKED_FILL if filled else FILL
        operands = {"mask": sentinel, "keep": keep}
        # judged at every softmax the product reaches (one per layer of a BERT), each with its own scores; a tensor
        # the product is added to on the way (T5's position bias) is read too: the proof feeds or computes it
        readings = {graph.output(end.softmax): Reading(x, dict(operands, bias=end.stacked.other if end.stacked else None),
                                                       (_softmax_axis(graph, end.softmax),), {"fill": fill, "form": PRODUCT})
                    for end, x in zip(ends, scores)}

        def body(trace):
            trace.take(op, *casts, *path, *(s.add for s in stacked.values()), *(end.add for end in ends), *out_casts,
                       *(end.softmax for end in ends))
            for s in stacked.values():
                other = stacked_sentinel(graph, s.other)
                if other is not None:
                    trace.fail(f"(1 - m) * sentinel is added to '{s.other}', which holds a mask sentinel too ({other}): "
                               f"two stacked sentinels are not rewritten by this form")
            keep_shape = [graph.dim(keep, i) for i in range(graph.rank(keep))]
            for end, x in zip(ends, scores):
                value = end.stacked.entry if end.stacked is not None else end.value
                if end.stacked is not None:  # laid out along the trailing axes of its sum with the bias
                    x = graph.output(end.stacked.add)
                at_add = [graph.dim(value, i) for i in range(graph.rank(value))]
                dims = [graph.dim(x, i) for i in range(graph.rank(x))]
                if None in at_add + keep_shape + dims or \
                        list(_laid_out(np.zeros(keep_shape), dims).shape) != [1] * (len(dims) - len(at_add)) + at_add:
                    trace.fail("its (1 - m) * sentinel reaches the add in a layout other than the scores' trailing axes")
            return Match(x=scores[0], axes=readings[graph.output(ends[0].softmax)].axes, output=graph.output(op), output_op=op,
                         ops=trace.op_names(), dtype=graph.dtype(graph.output(op)), operands=operands,
                         params={"fill": fill, "form": PRODUCT}, judged_at=tuple(readings), readings=readings,
                         binary=(keep,), facts={"at_add": ends[0].value},
                         note=(f"(1 - m) * sentinel: the sentinel replaced by {fill:g}{stacked_note(filled)}, assuming '{keep}' holds only 0 "
                               f"and 1 (an attention mask; the proof feeds it so): in fp16 0 * -inf was NaN at every "
                               f"position the mask keeps; {row_restored('a row that m drops entirely', 8 if filled else 16)}"))

        return attempt(graph, body)

    def _shared(self, graph, op, root_op, held, computed=None):
        """A mask several softmaxes read (every layer of a BERT or a decoder): one match, anchored at the first of them
        in program order, replacing the mask once where it is shared (the constant, or the select computing it, or
        the cast of either that every layer reads) and judged at every softmax with that layer's own scores. None when
        `op`'s mask is read by this softmax alone, or by anything but such layers (each layer is then rewritten on
        its own); NOT_THIS_PATTERN at the other softmaxes (the first one's match covers them). `computed`: (form,
        mask, cond, other, cond cast or None) of a mask computed by a select from the input."""
        point, down = shared_point(graph, graph.output(root_op))
        readers = shared_readers(graph, point, adds_only=computed is not None)
        if not readers or len(readers) < 2 or any(graph.dtype(graph.arg(r.softmax, "x")) != FLOAT16 for r in readers):
            return None
        if readers[0].softmax is not op:
            return NOT_THIS_PATTERN  # judged with the first reader's match
        judged = tuple(graph.output(r.softmax) for r in readers)
        if computed is None:
            mask = graph.output(root_op)
            readings = {j: Reading(r.x, {"mask": mask, "cond": r.cond}, (_softmax_axis(graph, r.softmax),),
                                   {"fill": FILL, "form": SIDE_FORMS[r.side]}) for j, r in zip(judged, readers)}
            operands, form, binary, extra = {"mask": mask, "cond": None}, SHARED, (), ()
        else:
            each, mask, cond, other, cond_op = computed
            operands = {"mask": mask, "cond": cond, "other": other}
            readings = {j: Reading(r.x, operands, (_softmax_axis(graph, r.softmax),), {"fill": FILL, "form": each})
                        for j, r in zip(judged, readers)}
            form = SHARED_FILL_IN_A if each == FILL_IN_A else SHARED_FILL_IN_B
            binary, extra = ((graph.arg(cond_op, "x"),), (cond_op,)) if cond_op is not None else ((), ())

        def body(trace):
            trace.take(root_op, *down, *extra, *(o for r in readers for o in r.ops()))
            for h in (held.values() if computed is not None else (held,)):
                if h is None and computed is None:
                    trace.fail("its mask cannot be read")
                if h is not None and (h["nan"] or h["pos_inf"]):
                    trace.recognise(self.title, f"its mask holds {h['nan']} NaN and {h['pos_inf']} +inf: not a mask sentinel")
            constants = [operands["mask"]] + ([operands["other"]] if computed is not None and _is_const(graph, operands["other"]) else [])
            if any(graph.const_value(v) is None for v in constants):
                trace.fail("its mask is too large to rewrite as an immediate constant (a stored mask is not rewritten yet)")
            first = readings[judged[0]]
            if computed is None:
                count = held["sentinels"]
                values = graph.const_value(operands["mask"])
                note = mask_note(values, count, first.axes[0], graph.rank(graph.arg(op, "x")), first.params["form"],
                                 graph.const_value(readers[0].cond) if readers[0].cond is not None else None)
            else:
                count = sum(h["sentinels"] for h in held.values() if h is not None)
                note = mask_note(None, count, first.axes[0], graph.rank(graph.arg(op, "x")), first.params["form"])
            note = (f"one mask shared by {len(readers)} softmaxes, rewritten once at '{point}' and read by all of them; "
                    f"{note}")
            return Match(x=first.x, axes=first.axes, output=point, output_op=graph.producer(point), ops=trace.op_names(),
                         dtype=graph.dtype(point), operands=operands, params={"fill": FILL, "form": form},
                         judged_at=judged, readings=readings, binary=binary, note=note)

        return attempt(graph, body)

    @staticmethod
    def _product_left_alone(graph, op, casts, why, sentinel):
        """An fp16 `(1 - m) * sentinel` whose path to the softmax the rule does not handle (T5 adds it to its
        position bias first): left alone with the reason, not silently - in fp16 it may be NaN everywhere."""

        def body(trace):
            trace.take(op, *casts)
            effect = ("fp16 holds the sentinel as -inf, so 0 * -inf is NaN at every position the mask keeps"
                      if not abs(sentinel) < FP16_LIMIT else "the sentinel stays as it is")
            trace.fail(f"(1 - m) * sentinel, not made finite: {why} (only adds into a softmax, through "
                       f"expand_dims/reshape/squeeze/casts, are handled); {effect}")

        return attempt(graph, body)

    def _elsewhere(self, graph, op):
        """An infinite constant (or one fp16 makes infinite) that is neither a softmax's mask nor a clip/maximum/
        minimum bound: recognised and left alone, with the reason. Only constants read whole (SMALL_CONSTANT)."""
        value = graph.output(op)
        data = graph.const_value(value)
        if data is None or np.asarray(data).dtype.kind != "f" or not reaches_fp16(graph, value):
            return NOT_THIS_PATTERN
        data = np.asarray(data, np.float64)
        if feeds_a_handled_op(graph, value):  # a stacked select fill is a sentinel from below FILL on (-65504 too)
            return self._stacked_fill(graph, op) if (data < FILL).any() else NOT_THIS_PATTERN
        if not (np.abs(data[~np.isnan(data)]) > FP16_LIMIT).any():
            return NOT_THIS_PATTERN

        def body(trace):
            trace.take(op)
            readers = ", ".join(sorted({graph.op_type(u.op) for u in graph.consumers(value) if u.op is not None})) or "nothing"
            if _triu_of_fill(graph, value):
                trace.recognise("InfiniteConstant", f"infinite in fp16, read by {readers}: a fill cut by x - band_part(x) "
                                                    "(coremltools' triu/tril of a tensor whose shape is known only at run "
                                                    "time), which is -inf - -inf = NaN wherever the band keeps a position, "
                                                    "in every precision: a mask built as triu(full(-inf), 1) makes every output "
                                                    "NaN (mlopt audit shows where); build it with a finite fill such as "
                                                    "-1e4, or pass it as an input")
                return
            trace.recognise("InfiniteConstant", f"infinite in fp16, read by {readers}: not a mask before a softmax nor a "
                                                f"clip/maximum/minimum bound, so its meaning there is the model's own")

        return attempt(graph, body)

    def _stacked_fill(self, graph, op):
        """The fill constant of selects whose result is added to a `(1 - m) * sentinel` before a softmax: GPT-2's
        eager attention, `where(causal, w, finfo.min) + (1 - m) * finfo.min` (transformers' GPT2Attention._attn
        before SDPA). In fp16 the fill is -inf; the product's match (`_product`) makes its own sentinel finite, this
        one makes the fill STACKED_FILL, so that a key both in the future and padded holds 2 * STACKED_FILL = FILL,
        finite, and one under a single mask STACKED_FILL. Judged at every softmax with that layer's scores, the
        select's condition and the product fed as a finite tensor (it is computed outside this chain)."""
        point, down = shared_point(graph, graph.output(op))
        readings, taken = {}, []
        for use in graph.consumers(point):
            select = use.op
            if select is None or graph.op_type(select) != "select" or use.param not in ("a", "b"):
                return NOT_THIS_PATTERN
            x = graph.arg(select, "b" if use.param == "a" else "a")
            after = [u for u in graph.consumers(graph.output(select))]
            if x is None or graph.is_constant_expr(x) or len(after) != 1 or after[0].op is None or \
                    graph.op_type(after[0].op) != "add":
                return NOT_THIS_PATTERN
            add = after[0].op
            bias = graph.arg(add, "y" if after[0].param == "x" else "x")
            reader = softmax_after(graph, graph.output(add))
            if reader is None or bias is None or not is_sentinel_product(graph, bias):
                return NOT_THIS_PATTERN
            softmax, out_casts = reader
            if graph.dtype(graph.arg(softmax, "x")) != FLOAT16:
                return NOT_THIS_PATTERN
            form = KEEP_WHERE_FALSE if use.param == "a" else KEEP_WHERE_TRUE
            readings[graph.output(softmax)] = Reading(x, {"mask": point, "cond": graph.arg(select, "cond"), "bias": bias},
                                                      (_softmax_axis(graph, softmax),), {"fill": STACKED_FILL, "form": form})
            taken += [select, add, *out_casts, softmax]
        if not readings:
            return NOT_THIS_PATTERN
        held = scan(graph, point, FILL)

        def body(trace):
            trace.take(op, *down, *taken)
            if held is None or held["nan"] or held["pos_inf"]:
                trace.recognise(self.title, "its select fill holds NaN or +inf (or cannot be read): not a mask sentinel")
            first = readings[next(iter(readings))]
            return Match(x=first.x, axes=first.axes, output=point, output_op=graph.producer(point), ops=trace.op_names(),
                         dtype=graph.dtype(point), operands={"mask": point, "cond": None},
                         params={"fill": STACKED_FILL, "form": STACKED}, judged_at=tuple(readings), readings=readings,
                         note=(f"{held['sentinels']} sentinel(s) of a select fill replaced by {STACKED_FILL:g}: its "
                               f"result is added to a (1 - m) * sentinel before {len(readings)} softmax(es), so two "
                               f"sentinels stack on a key both masks drop; 2 x {STACKED_FILL:g} = {FILL:g} stays "
                               f"finite in fp16; {row_restored('a row that both masks drop entirely', 8)} (uniform over "
                               f"the keys only one mask drops: min + min is -inf in float32 too)"))

        return attempt(graph, body)

    def lower(self, b, m):
        mask = b.constant_value(m.operands["mask"])
        if mask is None:
            raise LoweringFailed("its mask cannot be read as a constant")
        form = int(m.params["form"])
        fill = float(m.params["fill"])
        if form in (SHARED, STACKED):  # the shared mask (or a stacked select fill) itself, made finite in the dtype its readers read it in
            return b.const(finite_sentinels(mask, fill), m.dtype)
        if form in (SHARED_FILL_IN_A, SHARED_FILL_IN_B):  # the shared select, its constant branches made finite
            mask_value, other = b.const(finite_sentinels(mask, fill), b.dtype(m.operands["mask"])), m.operands["other"]
            held = b.constant_value(other)
            if held is not None:
                other = b.const(finite_sentinels(held, fill), b.dtype(other))
            return b.select(m.operands["cond"], mask_value, other) if form == SHARED_FILL_IN_A else \
                b.select(m.operands["cond"], other, mask_value)
        if form in (FILL_IN_A, FILL_IN_B):  # the select's constant branches made finite, in their own dtype
            fill = float(m.params["fill"])
            mask_value, other = (b.const(finite_sentinels(mask, fill), b.dtype(m.operands["mask"])), m.operands["other"])
            held = b.constant_value(other)
            if held is not None:
                other = b.const(finite_sentinels(held, fill), b.dtype(other))
            computed = b.select(m.operands["cond"], mask_value, other) if form == FILL_IN_A else \
                b.select(m.operands["cond"], other, mask_value)
            if b.dtype(computed) != b.dtype(m.x):  # a mask computed in fp32 and cast to the scores' fp16
                computed = b.cast(computed, b.dtype(m.x))
            total = b.add(m.x, computed)
            if b.dtype(total) != m.dtype:
                total = b.cast(total, m.dtype)
            return b.elementwise("softmax", total, axis=int(m.axes[0]))
        if form == PRODUCT:  # the product is the replaced value: the layout ops, add and softmax read it as before
            return b.mul(m.operands["keep"], b.const(finite_sentinels(mask, float(m.params["fill"])), b.dtype(m.operands["mask"])))
        finite = b.const(finite_sentinels(mask, float(m.params["fill"])), b.dtype(m.x))
        if form == ADD:
            total = b.add(m.x, finite)
        elif form == KEEP_WHERE_TRUE:
            total = b.select(m.operands["cond"], m.x, finite)
        else:
            total = b.select(m.operands["cond"], finite, m.x)
        if b.dtype(total) != m.dtype:  # an fp32 add whose sum is cast to fp16 for the softmax: the cast stays
            total = b.cast(total, m.dtype)
        return b.elementwise("softmax", total, axis=int(m.axes[0]))

    def output_shape(self, x_shape, operand_shapes, axes, params):
        """A (1 - m) * sentinel form replaces the product (keep's shape); the others the softmax (x broadcast)."""
        if int(params.get("form", ADD)) == PRODUCT:
            return tuple(operand_shapes["keep"])
        return None

    def reference(self, x, operands, axes, params):
        """The float32 source's meaning: every sentinel is float32's minimum (masked entries exactly 0, a fully
        masked row uniform), in float64."""
        def source(values):
            values = np.asarray(values, np.float64)
            return np.where(values < params["fill"], FLOAT32_MIN, values)

        operands = dict(operands, other=source(operands["other"])) if operands.get("other") is not None else operands
        return _softmax(_combine(x, source(operands["mask"]), operands, params), axes[0], absorb=True)

    def as_read(self, match, x, operands):
        """What the chain computes as stored, in float64 (-inf stays -inf: NaN in a row masked entirely)."""
        return _softmax(_combine(x, np.asarray(operands["mask"], np.float64), operands, match.params), match.axes[0])

    def report_fields(self, match):
        """The form by name (`mask_form`), not the integer code the lowering reads."""
        params = dict(match.params)
        return {"axes": list(match.axes), "fill": params["fill"], "mask_form": FORMS[int(params["form"])]}

    def summary(self, match):
        return f"{FORMS[int(match.params['form'])]}, axis {match.axes[0]}, fill {match.params['fill']:g}"


def _through_casts(graph, value):
    """(the op computing `value` beneath any casts, the casts), walking up from the softmax's input: coremltools
    keeps an add with a mask beyond fp16's range in fp32 and casts its sum to fp16 (-1e9 + s becomes -inf there)."""
    casts, seen = [], set()
    op = graph.producer(value) if value is not None else None
    while op is not None and graph.op_type(op) == "cast" and id(op) not in seen:
        seen.add(id(op))
        casts.append(op)
        x = graph.arg(op, "x")
        op = graph.producer(x) if x is not None else None
    return op, casts


def _triu_of_fill(graph, value):
    """Whether constant `value` fills a tensor that is then cut as `x - band_part(x)`: how coremltools converts
    torch's triu/tril with a nonzero diagonal (frontend/torch/ops.py, `triu`) where the shape is only known at run
    time, so that the cut is not folded at conversion. With an infinite fill the subtraction is NaN wherever the
    band keeps a position."""
    for use in graph.consumers(value):
        if use.op is None or graph.op_type(use.op) != "fill":
            continue
        filled = graph.output(use.op)
        for band in graph.consumers(filled):
            if band.op is None or graph.op_type(band.op) != "band_part":
                continue
            kept = graph.output(band.op)
            if any(u.op is not None and graph.op_type(u.op) == "sub" and graph.arg(u.op, "x") == filled
                   and graph.arg(u.op, "y") == kept for u in graph.consumers(kept)):
                return True
    return False


def _softmax_axis(graph, softmax):
    axis = graph.const(softmax, "axis")
    return int(axis if axis is not None else -1) % graph.rank(graph.output(softmax))


def _is_const(graph, value):
    """Whether a const op defines `value` (graph/interface.py has no such question: both adapters answer this)."""
    op = graph.producer(value) if value is not None else None
    return op is not None and graph.op_type(op) == "const"


def reaches_fp16(graph, value):
    """Whether the constant is fp16, or is cast to fp16 by one of its readers."""
    if graph.dtype(value) == FLOAT16:
        return True
    return any(u.op is not None and graph.op_type(u.op) == "cast" and graph.dtype(graph.output(u.op)) == FLOAT16
               for u in graph.consumers(value))


def feeds_a_handled_op(graph, value, depth=6):
    """Whether the constant reaches (through casts, layout ops, a mul) an add or select feeding a softmax (this rule) or a clip/maximum/minimum
    (the finite_bounds rule): those are judged there."""
    frontier = [value]
    for _ in range(depth):
        following = []
        for current in frontier:
            for use in graph.consumers(current):
                kind = graph.op_type(use.op) if use.op is not None else None
                if kind in ("clip", "maximum", "minimum", "softmax"):
                    return True
                if kind in ("add", "select", "mul", *LAYOUT):
                    following.append(graph.output(use.op))
        frontier = following
    return False


def stacked_sentinel(graph, value):
    """What sentinel a tensor a (1 - m) * sentinel is added to holds itself ("a constant with N sentinel(s)", "the
    select '<name>' fills with one"), or None: a position bias, a finite constant. Only its producer is asked, through
    casts: a sentinel deeper inside a computed tensor is the proof's to find (it feeds the tensor as computed)."""
    source, _ = _through_casts(graph, value)
    if source is None:
        return None
    if graph.op_type(source) == "const":
        held = scan(graph, graph.output(source), FILL)
        return None if held is None or not held["sentinels"] else f"a constant with {held['sentinels']} sentinel(s)"
    if graph.op_type(source) == "select":
        for branch in ("a", "b"):
            fill_op, _ = const_through_casts(graph, graph.arg(source, branch))
            held = scan(graph, graph.output(fill_op), FILL) if fill_op is not None else None
            if held is not None and held["sentinels"]:
                return f"the select '{graph.output(source)}' fills with one"
    return None


def is_sentinel_product(graph, value):
    """Whether `value` is, through LAYOUT ops, a product of a computed tensor and a constant scalar sentinel (below
    FILL): the `(1 - m) * finfo.min` the select's fill stacks with."""
    seen = set()
    op = graph.producer(value)
    while op is not None and graph.op_type(op) in LAYOUT and id(op) not in seen:
        seen.add(id(op))
        op = graph.producer(graph.arg(op, "x"))
    if op is None or graph.op_type(op) != "mul":
        return False
    for keep, side in (("x", "y"), ("y", "x")):
        const_op, _ = const_through_casts(graph, graph.arg(op, side))
        held = graph.const_value(graph.output(const_op)) if const_op is not None else None
        if held is not None and np.size(held) == 1 and float(np.asarray(held, np.float64).reshape(())) < FILL and \
                not graph.is_constant_expr(graph.arg(op, keep)):
            return True
    return False


def stacked_note(filled):
    """What the product's note adds when its scores hold a select fill too."""
    if not filled:
        return ""
    return (f" (stacked: its scores hold a sentinel too - {'; '.join(filled)} - made finite as {STACKED_FILL:g} as well, "
            f"so a key both masks drop holds {FILL:g})")


def x_is_const(graph, value):
    return graph.is_constant_expr(value)


def _combine(x, mask, operands, params):
    x = np.asarray(x, np.float64)
    form = int(params["form"])
    if form == PRODUCT:  # (1 - m) * sentinel, laid out along the scores' trailing axes (expand_dims/reshape)
        keep = np.asarray(operands["keep"], np.float64)
        with np.errstate(invalid="ignore"):
            product = keep * mask
        bias = operands.get("bias")
        return x + _laid_out(product, x.shape) + (0.0 if bias is None else np.asarray(bias, np.float64))
    if form == ADD:
        return x + mask
    if form in (FILL_IN_A, FILL_IN_B):
        cond, other = np.asarray(operands["cond"], bool), np.asarray(operands["other"], np.float64)
        return x + (np.where(cond, mask, other) if form == FILL_IN_A else np.where(cond, other, mask))
    cond = np.asarray(operands["cond"]).astype(bool)
    selected = np.where(cond, x, mask) if form == KEEP_WHERE_TRUE else np.where(cond, mask, x)
    bias = operands.get("bias")  # a (1 - m) * sentinel added to the select (STACKED)
    return selected if bias is None else selected + np.asarray(bias, np.float64)


def _laid_out(product, shape):
    """The product reshaped as the layout ops between it and the add did (they keep the element order): its
    elements on the trailing axes of `shape` that hold them, broadcast over the others."""
    size, dims = product.size, []
    for d in reversed(shape):
        if size == 1:
            break
        dims.insert(0, d)
        size //= d if d else 1
    return np.reshape(product, [1] * (len(shape) - len(dims)) + dims)


def _softmax(v, axis, absorb=False):
    """Softmax along `axis`. With `absorb`, a value at float32's minimum swallows what is added to it, as it does in
    float32 (its spacing there is 2**104): float64 would keep the score and make a fully masked row non-uniform."""
    if absorb:
        v = np.where(v <= FLOAT32_MIN / 2, FLOAT32_MIN, v)
    with np.errstate(invalid="ignore", over="ignore"):
        e = np.exp(v - np.max(v, axis=axis, keepdims=True))
        return e / np.sum(e, axis=axis, keepdims=True)


def row_restored(which, absorbed=16):
    """Which behaviour the rewrite gives a softmax row masked entirely (the issue's question, for the report):
    `absorbed`, the scores fp16's spacing at the fill swallows (16 at FILL, 8 at STACKED_FILL)."""
    return (f"{which} is uniform after the rewrite (the float32 source's behaviour, for scores between -{absorbed} and "
            f"{absorbed}), "
            f"where the fp16 original gave NaN")


def mask_note(values, sentinels, axis, rank, form=ADD, cond=None):
    """What the report says about one mask: how many sentinels were replaced, the rows it masks entirely (an
    additive mask's, or a select's whose condition is a constant) and which behaviour the rewrite gives them."""
    if form == ADD:
        masked = np.asarray(values, np.float64) < FILL
    elif cond is not None:
        masked = ~np.asarray(cond, bool) if form == KEEP_WHERE_TRUE else np.asarray(cond, bool)
    else:
        masked = None
    full = None
    if masked is not None:
        axis -= rank - masked.ndim  # the mask broadcasts against the scores from the trailing axes
        full = int(np.all(masked, axis=axis).sum()) if 0 <= axis < masked.ndim and masked.shape[axis] > 1 else 0
    text = f"{sentinels} sentinel(s) replaced by {FILL:g} (finite in fp16; masked probabilities stay 0)"
    if full is None:  # a select whose condition is computed: which rows it masks entirely is not known here
        return f"{text}; {row_restored('a row that the condition masks entirely')}"
    if full:
        return f"{text}; {full} row(s) masked entirely: NaN in the fp16 original, uniform after the rewrite (the float32 source's behaviour, for scores between -16 and 16)"
    return text


RULE = FiniteMaskRule()
