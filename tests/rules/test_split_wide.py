"""split_wide: a linear wider than 16384 output channels -> balanced chunks of at most 16384 and a concat.

On the fixtures of fixtures/make_wide_fixtures.py (LM heads of public models' vocabulary sizes, hidden size 4):
the op sequence after the rewrite, the chunk sizes, outputs equal in mlopt's interpreter and by `verify`, the
weight file holding exactly the blobs the program reads, lint before and after, the compressed heads left alone
with their reason, the tied embedding's cost in the report, the compute units, and the EXACT proof catching a
wrong lowering."""

import json
import os
import struct

import numpy as np
import pytest

from conftest import chains, fixture_path, inputs_for, main_view, op_types, run_package, tree_digest
from mlopt import lint, optimize_package
from mlopt.analyses.verify import verify_packages
from mlopt.report import LEFT_ALONE, MATCHED, REWRITTEN
from mlopt.rules import split_wide
from mlopt.rules.split_wide_pattern import MAX_CHANNELS, chunk_bounds, chunk_count

FOLDER = "wide"
EXPECTED = json.load(open(os.path.join(os.path.dirname(fixture_path("x", FOLDER)), "expected.json")))
PLAIN = sorted(n for n, e in EXPECTED.items() if e["vocab"] > MAX_CHANNELS and not e["compression"] and not e["output"])  # the head is the output
COMPRESSED = sorted(n for n, e in EXPECTED.items() if e["compression"])
RULES = (split_wide.RULE,)


def weights_file(path):
    return os.path.join(path, "Data", "com.apple.CoreML", "weights", "weight.bin")


def blob_records(path):
    """(offset, nbytes) of every blob in the package's weight.bin, walked from its header."""
    with open(weights_file(path), "rb") as f:
        data = f.read()
    count, _version = struct.unpack_from("<II", data, 0)
    records, position = [], 64
    for _ in range(count):
        sentinel, _code, nbytes, at = struct.unpack_from("<IIQQ", data, position)
        assert sentinel == 0xDEADBEEF and at == position + 64
        records.append((position, nbytes))
        position = (at + nbytes + 63) // 64 * 64
    return records, len(data)


def referenced_offsets(path):
    from mlopt.package import read_package
    from mlopt.package.weights import blob_values

    spec = read_package(path).spec
    return sorted({v.blobFileValue.offset for f in spec.mlProgram.functions.values() for v in blob_values(f)})


WEIGHT = {"linear": "weight", "conv": "weight", "matmul": "y"}  # where each fixture's head reads its weight


def weight_rows(path, op_type):
    """Output channels of every `op_type` op's weight, in program order (the fixtures' weights are (C, ...))."""
    view = main_view(path)
    return [view.dim(view.arg(op, WEIGHT[op_type]), 0) for op in view.ops() if view.op_type(op) == op_type]


# -- chunking -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("total", [16385, 32000, 32768, 32769, 50257, 65536, 151936, 3 * 16384 + 1])
def test_chunks_are_balanced_and_within_the_limit(total):
    bounds = chunk_bounds(total, chunk_count(total))
    sizes = [end - begin for begin, end in bounds]
    assert len(sizes) == -(-total // MAX_CHANNELS)
    assert max(sizes) <= MAX_CHANNELS and max(sizes) - min(sizes) <= 1 and sum(sizes) == total
    assert bounds[0][0] == 0 and all(a[1] == b[0] for a, b in zip(bounds, bounds[1:])) and bounds[-1][1] == total


def test_chunk_sizes_of_public_vocabularies():
    assert [e - b for b, e in chunk_bounds(32000, chunk_count(32000))] == [16000, 16000]
    assert [e - b for b, e in chunk_bounds(50257, chunk_count(50257))] == [12565, 12564, 12564, 12564]
    assert [e - b for b, e in chunk_bounds(151936, chunk_count(151936))] == [15194] * 6 + [15193] * 4
    # a weight cut only every 16 rows (one LUT per group of 16): balanced in groups, every boundary on a group
    assert [e - b for b, e in chunk_bounds(151936, chunk_count(151936, align=16), 16)] == [15200] * 6 + [15184] * 4
    assert chunk_count(3 * 8200, align=8200) == 3  # 2 chunks of 16400 would not fit: one more chunk
    assert chunk_count(32800, align=16400) is None  # no chunk of at most 16384 rows ends on a boundary


# -- the fixtures, end to end -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", PLAIN)
def test_wide_head_is_split_exactly(name, tmp_path):
    src, out = fixture_path(name, FOLDER), str(tmp_path / "out.mlpackage")
    expected = EXPECTED[name]
    k = chunk_count(expected["vocab"])
    report = optimize_package(src, out, rules=RULES)
    [chain] = chains(report, "split_wide")
    assert chain.status == REWRITTEN and chain.output == "logits" and chain.chunks == k
    assert chain.channels == expected["vocab"] and chain.op == expected["op"]
    sizes = sorted({e - b for b, e in chunk_bounds(expected["vocab"], k)}, reverse=True)
    assert chain.summary == f"{expected['vocab']} output channels -> {k} chunks of {' or '.join(map(str, sizes))}"

    before = op_types(src)
    after = op_types(out)
    head = expected["op"]
    assert after == [t for t in before if t != head] + [head] * k + ["concat"]
    sizes = [e - b for b, e in chunk_bounds(expected["vocab"], k)]
    assert weight_rows(out, head) == sizes

    feeds = inputs_for(src)
    original, rewritten = run_package(src, feeds), run_package(out, feeds)
    assert rewritten["logits"].shape == original["logits"].shape
    np.testing.assert_array_equal(rewritten["logits"], original["logits"])
    assert verify_packages(src, out).passed


@pytest.mark.parametrize("name", PLAIN)
def test_weight_file_holds_exactly_the_blobs_the_program_reads(name, tmp_path):
    src, out = fixture_path(name, FOLDER), str(tmp_path / "out.mlpackage")
    optimize_package(src, out, rules=RULES)
    records, size = blob_records(out)
    assert 64 + sum(64 + (n + 63) // 64 * 64 for _, n in records) == size  # headers + blobs = the file: no orphans
    assert [offset for offset, _ in records] == referenced_offsets(out)
    expected = EXPECTED[name]
    itemsize = 2 if expected["dtype"] == "fp16" else 4
    weight_bytes = expected["vocab"] * expected["hidden"] * itemsize
    old_records, _ = blob_records(src)
    read = set(referenced_offsets(src))
    old_total = sum(n for offset, n in old_records if offset in read)  # what the input's program reads
    new_total = sum(n for _, n in records)
    # the chunks replace the weight (and bias) byte for byte; a tied weight stays for its gather as well
    assert new_total - old_total == (weight_bytes if expected["tied"] else 0)


def test_same_input_gives_the_same_bytes(tmp_path):
    src = fixture_path("llama_32000_fp16_ios17", FOLDER)
    optimize_package(src, tmp_path / "a.mlpackage", rules=RULES)
    optimize_package(src, tmp_path / "b.mlpackage", rules=RULES)
    assert tree_digest(tmp_path / "a.mlpackage") == tree_digest(tmp_path / "b.mlpackage")


@pytest.mark.parametrize("name", PLAIN)
def test_lint_flags_the_head_before_and_only_the_concat_after(name, tmp_path):
    src, out = fixture_path(name, FOLDER), str(tmp_path / "out.mlpackage")
    optimize_package(src, out, rules=RULES)
    wide = lambda path: sorted((f.op_type, f.op) for f in lint(path).findings if f.code == "dim-over-16384")
    assert wide(src) == [(EXPECTED[name]["op"], "logits")]
    # every chunk is within the limit; the concat putting them back together is as wide as the head was, and
    # lint says so (docs/lint.md: a concat of split pieces is itself over the limit)
    assert wide(out) == [("concat", "logits")]


def test_tied_embedding_keeps_its_table_and_the_report_says_what_the_split_added(tmp_path):
    name = "gpt2_50257_tied_fp16_ios17"
    src, out = fixture_path(name, FOLDER), str(tmp_path / "out.mlpackage")
    report = optimize_package(src, out, rules=RULES)
    [chain] = chains(report, "split_wide")
    added = 50257 * EXPECTED[name]["hidden"] * 2
    assert chain.status == REWRITTEN
    assert chain.note == f"the weight is also read by gather (tied embeddings): it stays for that reader and the split chunks add {added} bytes"
    view = main_view(out)
    [gather] = [op for op in view.ops() if view.op_type(op) == "gather"]
    assert [view.dim(view.arg(gather, "x"), i) for i in range(2)] == [50257, EXPECTED[name]["hidden"]]


def test_heads_at_the_limit_are_untouched(tmp_path):
    src, out = fixture_path("head_16384_fp16_ios17", FOLDER), str(tmp_path / "out.mlpackage")
    report = optimize_package(src, out, rules=RULES)
    assert chains(report) == []
    assert op_types(out) == op_types(src) == ["linear"]
    assert [f.code for f in lint(src).findings] == []


def compressed_kind(name):
    return {"palettize4": "constexpr_lut_to_dense", "palettize4_grouped16": "constexpr_lut_to_dense",
            "int8": "constexpr_affine_dequantize" if EXPECTED[name]["target"] == "ios17" else "constexpr_blockwise_shift_scale",
            }[EXPECTED[name]["compression"]]


@pytest.mark.parametrize("name", COMPRESSED)
def test_compressed_heads_are_split_in_their_compressed_form(name, tmp_path):
    src, out = fixture_path(name, FOLDER), str(tmp_path / "out.mlpackage")
    report = optimize_package(src, out, rules=RULES)
    [chain] = chains(report, "split_wide")
    kind, vocab, hidden, align = compressed_kind(name), EXPECTED[name]["vocab"], EXPECTED[name]["hidden"], EXPECTED[name]["align"]
    k = chunk_count(vocab, align=align)
    sizes = [e - b for b, e in chunk_bounds(vocab, k, align)]
    assert chain.status == REWRITTEN and chain.chunks == k and all(s % align == 0 for s in sizes)
    assert op_types(src) == [kind, "linear"]
    after = op_types(out)  # constexpr ops may be placed with the constants, ahead of the linears
    assert sorted(after[:-1]) == sorted([kind] * k + ["linear"] * k) and after[-1] == "concat"
    view = main_view(out)
    assert [view.dim(view.output(op), 0) for op in view.ops() if view.op_type(op) == kind] == sizes
    records, size = blob_records(out)
    assert 64 + sum(64 + (n + 63) // 64 * 64 for _, n in records) == size
    assert [offset for offset, _ in records] == referenced_offsets(out)
    assert max(n for _, n in records) < vocab * hidden * 2  # never expanded: no blob holds the fp16 weight
    read = set(referenced_offsets(src))
    assert sum(n for _, n in records) == sum(n for offset, n in blob_records(src)[0] if offset in read)
    assert verify_packages(src, out).passed
    feeds = inputs_for(src)
    np.testing.assert_array_equal(run_package(out, feeds)["logits"], run_package(src, feeds)["logits"])
    wide = lambda path: sorted((f.op_type, f.op) for f in lint(path).findings if f.code == "dim-over-16384")
    assert wide(src) == [("linear", "logits")] and wide(out) == [("concat", "logits")]


def compressed_program(tmp_path, vocab, hidden, op, target=None):
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    @mb.program(input_specs=[mb.TensorSpec((1, 2, hidden), dtype=types.fp16)], opset_version=target or ct.target.iOS18)
    def prog(h):
        return mb.linear(x=h, weight=op(), name="logits")

    return save_program(prog, str(tmp_path / "compressed.mlpackage"), target or ct.target.iOS18)


def test_sub_byte_indices_not_on_a_byte_are_left_alone(tmp_path):
    """16385 rows of 3 four-bit indices: the first chunk, rows 0-8193, ends mid-byte (8193 * 12 bits)."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    rng = np.random.default_rng(4)
    indices = rng.integers(0, 16, (16385, 3)).astype(types.np_uint4_dtype)
    lut = rng.standard_normal((1, 1, 16, 1)).astype(np.float16)
    src = compressed_program(tmp_path, 16385, 3, lambda: mb.constexpr_lut_to_dense(indices=indices, lut=lut))
    [chain] = chains(optimize_package(src, str(tmp_path / "out.mlpackage"), rules=RULES), "split_wide")
    assert chain.status == LEFT_ALONE
    assert chain.reason == ("its replacement could not be built: its 'indices': a 4-bit weight cannot be split at "
                            "element 0 along axis 0: not on a byte; not rewritten")  # the first chunk ends mid-byte


def test_per_block_scales_are_cut_on_block_boundaries(tmp_path):
    """16500 int8 rows with 3 scale blocks of 5500 rows: balanced chunks (8250) would cut a block, so the chunks
    are counted in blocks: 2 blocks and 1 (11000 + 5500 rows)."""
    from coremltools.converters.mil import Builder as mb

    rng = np.random.default_rng(5)
    data = rng.integers(-127, 128, (16500, 4)).astype(np.int8)
    scale = (rng.random((3, 1)) * 0.01 + 0.001).astype(np.float16)
    src = compressed_program(tmp_path, 16500, 4, lambda: mb.constexpr_blockwise_shift_scale(data=data, scale=scale))
    out = str(tmp_path / "out.mlpackage")
    [chain] = chains(optimize_package(src, out, rules=RULES), "split_wide")
    assert chain.status == REWRITTEN and chain.summary == "16500 output channels -> 2 chunks of 11000 or 5500"
    view = main_view(out)
    assert [view.dim(view.output(op), 0) for op in view.ops() if view.op_type(op) == "constexpr_blockwise_shift_scale"] == [11000, 5500]
    feeds = inputs_for(src)
    np.testing.assert_array_equal(run_package(out, feeds)["logits"], run_package(src, feeds)["logits"])


def test_blocks_wider_than_the_limit_are_left_alone(tmp_path):
    """32800 int8 rows with 2 scale blocks of 16400 rows: no chunk of at most 16384 rows ends on a block."""
    from coremltools.converters.mil import Builder as mb

    rng = np.random.default_rng(9)
    data = rng.integers(-127, 128, (32800, 2)).astype(np.int8)
    scale = (rng.random((2, 1)) * 0.01 + 0.001).astype(np.float16)
    src = compressed_program(tmp_path, 32800, 2, lambda: mb.constexpr_blockwise_shift_scale(data=data, scale=scale))
    [chain] = chains(optimize_package(src, str(tmp_path / "out.mlpackage"), rules=RULES), "split_wide")
    assert chain.status == LEFT_ALONE
    assert chain.reason == "its compressed weight can be cut only every 16400 rows, more than 16384"


def test_per_block_scales_on_chunk_boundaries_are_sliced(tmp_path):
    from coremltools.converters.mil import Builder as mb

    rng = np.random.default_rng(6)
    data = rng.integers(-127, 128, (16500, 4)).astype(np.int8)
    scale = (rng.random((6, 1)) * 0.01 + 0.001).astype(np.float16)
    src = compressed_program(tmp_path, 16500, 4, lambda: mb.constexpr_blockwise_shift_scale(data=data, scale=scale))
    out = str(tmp_path / "out.mlpackage")
    [chain] = chains(optimize_package(src, out, rules=RULES), "split_wide")
    assert chain.status == REWRITTEN
    view = main_view(out)
    scales = [[d.constant.size for d in op.inputs["scale"].arguments[0].value.type.tensorType.dimensions]
              for op in view.ops() if view.op_type(op) == "constexpr_blockwise_shift_scale"]
    assert scales == [[3, 1], [3, 1]]  # 6 blocks of 2750 rows: 3 per chunk of 8250
    feeds = inputs_for(src)
    np.testing.assert_array_equal(run_package(out, feeds)["logits"], run_package(src, feeds)["logits"])


def test_other_compute_units_report_without_rewriting(tmp_path):
    src, out = fixture_path("llama_32000_fp16_ios17", FOLDER), str(tmp_path / "out.mlpackage")
    report = optimize_package(src, out, compute_units="ALL", rules=RULES)
    [chain] = chains(report, "split_wide")
    assert chain.status == MATCHED
    assert op_types(out) == ["linear"]


def test_the_exact_proof_rejects_chunks_off_by_one_row(tmp_path, monkeypatch):
    """Chunk boundaries shifted by one row: shapes and types stay valid, the outputs do not."""
    def shifted(self, b, m):
        weight = m.operands["weight"]
        out = b.dim(weight, 0)
        first = b.linear(m.x, b.constant_slice(weight, 0, 0, out // 2 + 1))
        second = b.linear(m.x, b.constant_slice(weight, 0, out // 2, out - 1 + 1))
        third = b.slice_along(second, b.rank(m.x) - 1, 1, out - out // 2)
        return b.concat([b.slice_along(first, b.rank(m.x) - 1, 1, out // 2 + 1), third, b.slice_along(first, b.rank(m.x) - 1, 0, 1)],
                        b.rank(m.x) - 1)

    monkeypatch.setattr(type(split_wide.RULE), "lower", shifted)
    src, out = fixture_path("llama_32000_fp16_ios17", FOLDER), str(tmp_path / "out.mlpackage")
    report = optimize_package(src, out, rules=RULES)
    [chain] = chains(report, "split_wide")
    assert chain.status == LEFT_ALONE
    assert chain.reason.startswith("proof failed: the rewrite differs from the WideLinear chain by ")
    assert chain.reason.endswith("; rolled back")
    assert op_types(out) == ["linear"]


def test_a_large_stored_linear_weight_is_streamed_not_read_whole(monkeypatch):
    """The interpreter reads a linear's weight larger than STREAM_ELEMENTS a block of rows at a time (the proof
    and verify of a 32000 x 2048 head stay bounded); the result equals the whole read, in every dtype mode."""
    from mlopt.numerics import streamed
    from mlopt.package.weights import BlobReader

    src = fixture_path("llama_32000_fp16_ios17", FOLDER)
    feeds = inputs_for(src)
    whole = {mode: run_package(src, feeds, float_dtype=mode)["logits"] for mode in (None, np.float64)}
    windows, reads = [], []
    real_window, real_read = BlobReader.read_window, BlobReader.read
    monkeypatch.setattr(BlobReader, "read_window", lambda self, *a, **k: windows.append(a[-1]) or real_window(self, *a, **k))
    monkeypatch.setattr(BlobReader, "read", lambda self, *a, **k: reads.append(a[3]) or real_read(self, *a, **k))
    monkeypatch.setattr(streamed, "STREAM_ELEMENTS", 10_000)
    for mode in (None, np.float64):
        np.testing.assert_allclose(run_package(src, feeds, float_dtype=mode)["logits"], whole[mode], rtol=1e-6 if mode is None else 1e-12)
    rows_per_block = 10_000 // EXPECTED["llama_32000_fp16_ios17"]["hidden"]
    assert max(windows) == rows_per_block * EXPECTED["llama_32000_fp16_ios17"]["hidden"]
    assert [32000, 4] not in [list(s) for s in reads]  # the weight is never read whole


# -- programs written here: the forms the fixtures do not spell -------------------------------------------------------

def save_program(prog, path, target=None):
    import coremltools as ct

    ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=target or ct.target.iOS17,
               pass_pipeline=ct.PassPipeline.EMPTY, compute_precision=ct.precision.FLOAT32, skip_model_load=True).save(path)
    return path


def test_a_constant_left_matmul_operand_is_split_along_its_rows(tmp_path):
    """W @ x with W (C, D) constant: the output's channels are on axis -2, and so is the concat."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    weight = np.random.default_rng(1).standard_normal((20000, 4)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec((2, 4, 3), dtype=types.fp32)], opset_version=ct.target.iOS17)
    def prog(h):
        return mb.matmul(x=weight, y=h, name="scores")

    src = save_program(prog, str(tmp_path / "left.mlpackage"))
    out = str(tmp_path / "out.mlpackage")
    [chain] = chains(optimize_package(src, out, rules=RULES), "split_wide")
    assert chain.status == REWRITTEN and chain.axes == [1] and chain.summary == "20000 output channels -> 2 chunks of 10000"
    assert op_types(out) == ["matmul", "matmul", "concat"]
    feeds = inputs_for(src)
    np.testing.assert_array_equal(run_package(out, feeds)["scores"], run_package(src, feeds)["scores"])


def test_a_conv_that_is_not_a_linear_over_channels_is_left_alone(tmp_path):
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    weight = np.zeros((16400, 2, 3, 1), np.float32)

    @mb.program(input_specs=[mb.TensorSpec((1, 2, 5, 1), dtype=types.fp32)], opset_version=ct.target.iOS17)
    def prog(h):
        return mb.conv(x=h, weight=weight, name="wide")

    src = save_program(prog, str(tmp_path / "conv3.mlpackage"))
    [chain] = chains(optimize_package(src, str(tmp_path / "out.mlpackage"), rules=RULES), "split_wide")
    assert chain.status == LEFT_ALONE and chain.reason == "its kernel is 3x1, not 1x1"


def test_conversion_time_splits_the_head(tmp_path):
    """mlopt.convert with the rule: the head arrives split in the converted program, outputs unchanged."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types
    from mlopt.coreml import convert

    weight = np.random.default_rng(2).standard_normal((16400, 4)).astype(np.float32)
    bias = np.random.default_rng(3).standard_normal(16400).astype(np.float32)

    def program():
        @mb.program(input_specs=[mb.TensorSpec((1, 3, 4), dtype=types.fp32)], opset_version=ct.target.iOS17)
        def prog(h):
            return mb.linear(x=h, weight=weight, bias=bias, name="logits")
        return prog

    model = convert(program(), convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
                    compute_precision=ct.precision.FLOAT32, compute_units=ct.ComputeUnit.CPU_AND_NE,
                    skip_model_load=True, rules=RULES)
    path = str(tmp_path / "converted.mlpackage")
    model.save(path)
    assert op_types(path) == ["linear", "linear", "concat"]
    assert weight_rows(path, "linear") == [8200, 8200]
    plain = save_program(program(), str(tmp_path / "plain.mlpackage"))
    feeds = inputs_for(plain)
    np.testing.assert_array_equal(run_package(path, feeds)["logits"], run_package(plain, feeds)["logits"])


def test_a_matmul_operand_split_along_its_columns(tmp_path):
    """x @ W with W (D, C) not transposed: each chunk is D runs of bytes, one per row of W."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    weight = np.random.default_rng(7).standard_normal((4, 16390)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec((1, 3, 4), dtype=types.fp32)], opset_version=ct.target.iOS17)
    def prog(h):
        return mb.matmul(x=h, y=weight, name="logits")

    src = save_program(prog, str(tmp_path / "cols.mlpackage"))
    out = str(tmp_path / "out.mlpackage")
    [chain] = chains(optimize_package(src, out, rules=RULES), "split_wide")
    assert chain.status == REWRITTEN and chain.summary == "16390 output channels -> 2 chunks of 8195"
    view = main_view(out)
    assert [[view.dim(view.arg(op, "y"), i) for i in range(2)] for op in view.ops() if view.op_type(op) == "matmul"] == [[4, 8195]] * 2
    feeds = inputs_for(src)
    np.testing.assert_array_equal(run_package(out, feeds)["logits"], run_package(src, feeds)["logits"])


def test_the_proof_reads_new_chunks_a_window_at_a_time(tmp_path, monkeypatch):
    """With streaming on, the proof reads the new weight chunks through NewBlobs.window, never whole."""
    from mlopt.numerics import streamed
    from mlopt.package.weight_writer import NewBlobs

    monkeypatch.setattr(streamed, "STREAM_ELEMENTS", 4_000)
    windows = []
    real_window = NewBlobs.window
    monkeypatch.setattr(NewBlobs, "window", lambda self, *a: windows.append(a[-1]) or real_window(self, *a))
    real_value = NewBlobs.value

    def whole(self, file_name, offset, np_dtype, shape):  # a bias chunk is small; a weight chunk must not come whole
        assert len(shape) == 1, f"a new weight chunk of shape {shape} was read whole"
        return real_value(self, file_name, offset, np_dtype, shape)

    monkeypatch.setattr(NewBlobs, "value", whole)
    src, out = fixture_path("llama_32000_fp16_ios17", FOLDER), str(tmp_path / "out.mlpackage")
    [chain] = chains(optimize_package(src, out, rules=RULES), "split_wide")
    assert chain.status == REWRITTEN
    assert windows and max(windows) == 4_000  # 1000 rows of 4 at a time
