"""split_wide: a linear wider than 16384 output channels -> balanced chunks and a concat, for the Neural Engine.

    y = linear(x, W, b)                    # W (C, D), C > 16384
 -> y_i = linear(x, W[r_i], b[r_i])        # k = ceil(C / 16384) balanced row ranges r_i (split_wide_pattern.py)
    y = concat([y_0, ..., y_k-1], axis=-1)

Every output element is the same dot product over the same weights in the same order, so the rewrite is exact
(the EXACT proof: the rewrite in float64 equals the original in float64). The rule declares no `reference`:
the proof compares against the original linear, which the interpreter streams a block of rows at a time
(numerics/streamed.py), so a 32000 x 2048 head is proved without its weight whole in memory. A stored weight stays stored: each
chunk is a byte range of the original blob, appended by the weight-file writer (package/weight_writer.py), and
the original is dropped from weight.bin when nothing else reads it. A weight a tied embedding's gather also
reads stays for the gather; the report's note says how many bytes the chunks add.

The concat's output is as wide as before: lint still reports it (docs/lint.md). The rewrite pays only where
the Neural Engine is targeted explicitly, so it rewrites with CPU_AND_NE only.
"""

from .base import EXACT, INT, Rule
from .split_wide_pattern import MAX_CHANNELS, chunk_bounds, match_wide_linear


class SplitWideRule(Rule):
    name = "split_wide"
    title = "WideLinear"
    description = f"a linear wider than {MAX_CHANNELS} output channels -> balanced chunks and a concat, with CPU_AND_NE"
    looks_for = f"linear with more than {MAX_CHANNELS} output channels"
    anchors = ("linear",)
    operands = ("weight", "bias")
    params = ("chunks",)
    param_types = {"chunks": INT}
    proof = EXACT
    operand_budget = 2**22  # x of a wide head: (batch, sequence, hidden) stays far below this
    units_reason = f"splitting below {MAX_CHANNELS} channels only pays where the Neural Engine is targeted explicitly (CPU_AND_NE)"

    def match(self, graph, op):
        return match_wide_linear(graph, op, self.title)

    def lower(self, b, m):
        weight, bias = m.operands["weight"], m.operands.get("bias")
        parts = []
        for begin, end in chunk_bounds(b.dim(weight, 0), int(m.params["chunks"])):
            part_bias = b.constant_slice(bias, 0, begin, end) if bias is not None else None
            parts.append(b.linear(m.x, b.constant_slice(weight, 0, begin, end), part_bias))
        return b.concat(parts, b.rank(m.x) - 1)

    def output_shape(self, x_shape, operand_shapes, axes, params):
        return (*x_shape[:-1], operand_shapes["weight"][0])

    def summary(self, match):
        channels, chunks = match.facts.get("channels"), int(match.params["chunks"])
        if channels is None:
            return f"{chunks} chunks"
        sizes = sorted({end - begin for begin, end in chunk_bounds(channels, chunks)}, reverse=True)
        return f"{channels} output channels -> {chunks} chunks of {' or '.join(map(str, sizes))}"

    def report_fields(self, match):
        fields = {"axes": list(match.axes), "chunks": int(match.params["chunks"])}
        if "channels" in match.facts:
            fields["channels"] = match.facts["channels"]
        return fields


RULE = SplitWideRule()
