"""split_wide: a linear, matmul or 1x1 conv wider than 16384 outputs -> balanced chunks and a concat, for the ANE.

    y = linear(x, W, b)                    # W (C, D), C > 16384
 -> y_i = linear(x, W[r_i], b[r_i])        # k = ceil(C / 16384) balanced row ranges r_i (split_wide_pattern.py)
    y = concat([y_0, ..., y_k-1], axis=-1)

and alike for a matmul with a constant operand (the operand sliced along its output axis, the chunks concatenated
along the output's) and a 1x1 conv (weight rows sliced, chunks concatenated along the channel axis 1).

Every output element is the same dot product over the same weights in the same order, so the rewrite is exact
(the EXACT proof: the rewrite in float64 equals the original in float64). The rule declares no `reference`:
the proof compares against the original linear, which the interpreter streams a block of rows at a time
(numerics/streamed.py), so a 32000 x 2048 head is proved without its weight whole in memory. A stored weight stays stored: each
chunk is a byte range of the original blob, appended by the weight-file writer (package/weight_writer.py), and
the original is dropped from weight.bin when nothing else reads it. A weight a tied embedding's gather also
reads stays for the gather; the report's note says how many bytes the chunks add.

The concat's output is as wide as before: lint still reports it (docs/lint.md). Where it is a function output
(directly or through casts, transposes and reshapes), `optimize --split-outputs` returns the chunks as separate
outputs instead, as ANEMLL does (`separable_output`, rewrites/output_parts.py). The rewrite pays only where
the Neural Engine is targeted explicitly, so it rewrites with CPU_AND_NE only.
"""

from .base import EXACT, INT, Rule
from .split_wide_pattern import CONV, LINEAR, MATMUL_Y, MAX_CHANNELS, chunk_bounds, match_wide


class SplitWideRule(Rule):
    name = "split_wide"
    title = "WideLinear"
    description = f"a linear, matmul or 1x1 conv wider than {MAX_CHANNELS} outputs -> balanced chunks and a concat, with CPU_AND_NE"
    looks_for = f"linear, matmul with a constant operand or 1x1 conv with more than {MAX_CHANNELS} output channels"
    anchors = ("linear", "matmul", "conv")
    operands = ("weight", "bias")
    params = ("chunks", "align", "form", "weight_axis", "concat_axis", "transpose_x", "transpose_y")
    param_types = {name: INT for name in params}
    proof = EXACT
    magnitudes = (1.0,)  # the chain is linear in x: whether the chunks hold the same rows does not depend on x's scale
    operand_budget = 2**22  # x of a wide head: (batch, sequence, hidden) stays far below this
    separable_output = True  # --split-outputs: the chunks become outputs <output>_0 ... <output>_{k-1}
    units_reason = f"splitting below {MAX_CHANNELS} channels only pays where the Neural Engine is targeted explicitly (CPU_AND_NE)"

    def match(self, graph, op):
        return match_wide(graph, op, self.title)

    def lower(self, b, m):
        weight, bias = m.operands["weight"], m.operands.get("bias")
        p = {k: int(v) for k, v in m.params.items()}
        parts = []
        for begin, end in chunk_bounds(b.dim(weight, p["weight_axis"]), p["chunks"], p.get("align", 1)):
            part = b.constant_slice(weight, p["weight_axis"], begin, end)
            part_bias = b.constant_slice(bias, 0, begin, end) if bias is not None else None
            if p["form"] == LINEAR:
                parts.append(b.linear(m.x, part, part_bias))
            elif p["form"] == CONV:
                parts.append(b.conv(m.x, part, part_bias))
            elif p["form"] == MATMUL_Y:
                parts.append(b.matmul(m.x, part, p["transpose_x"], p["transpose_y"]))
            else:
                parts.append(b.matmul(part, m.x, p["transpose_x"], p["transpose_y"]))
        return b.concat(parts, p["concat_axis"])

    def output_shape(self, x_shape, operand_shapes, axes, params):
        p = {k: int(v) for k, v in params.items()}
        w = list(operand_shapes["weight"])
        if p["form"] == LINEAR:
            return (*x_shape[:-1], w[0])
        if p["form"] == CONV:
            return (x_shape[0], w[0], *x_shape[2:])
        x = list(x_shape)
        if p["form"] == MATMUL_Y:
            rows = x[-1] if p["transpose_x"] else x[-2]
            return (*x[:-2], rows, w[p["weight_axis"]])
        cols = x[-2] if p["transpose_y"] else x[-1]
        return (*x[:-2], w[p["weight_axis"]], cols)

    def summary(self, match):
        channels, chunks = match.facts.get("channels"), int(match.params["chunks"])
        if channels is None:
            return f"{chunks} chunks"
        sizes = sorted({end - begin for begin, end in chunk_bounds(channels, chunks, int(match.params.get("align", 1)))}, reverse=True)
        return f"{channels} output channels -> {chunks} chunks of {' or '.join(map(str, sizes))}"

    def part_text(self, match, begin, end, total):
        return f"output channels {begin}-{end - 1} of {total} (an LM head's logits for token ids {begin}-{end - 1})"

    def report_fields(self, match):
        fields = {"axes": list(match.axes), "chunks": int(match.params["chunks"]), "op": ("linear", "matmul", "matmul", "conv")[int(match.params["form"])]}
        if "channels" in match.facts:
            fields["channels"] = match.facts["channels"]
        return fields


RULE = SplitWideRule()
