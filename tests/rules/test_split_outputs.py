"""`optimize --split-outputs`: a split head that is a function output returns its chunks as separate outputs.

Over the whole fixtures/wide matrix (fixtures/make_wide_fixtures.py): lint flags the head before; after a default
optimize only the concat reassembling the chunks (and ops after it) are flagged, and the report says where; after
--split-outputs nothing is wider than 16384, the function returns `<output>_0 ... <output>_{k-1}`, the model
description lists them with their shapes, the metadata records how to reassemble, verify compares them with the
original by that record, and the parts concatenated equal the original output exactly. Forms that keep the
concat (the output also read inside the function, a softmax over the vocabulary, a name already taken, a
classifier's description) say why; multifunction packages update each function's own description."""

import json
import os

import numpy as np
import pytest

from conftest import chains, fixture_path, inputs_for, main_view, op_types, run, run_package, tree_digest
from mlopt import lint, optimize_package
from mlopt.analyses.verify import verify_packages
from mlopt.package import read_package
from mlopt.report import REWRITTEN
from mlopt.rewrites.output_parts import METADATA_KEY
from mlopt.rules import split_wide
from mlopt.rules.split_wide_pattern import MAX_CHANNELS, chunk_bounds, chunk_count
from test_split_wide import blob_records, referenced_offsets

FOLDER = "wide"
EXPECTED = json.load(open(os.path.join(os.path.dirname(fixture_path("x", FOLDER)), "expected.json")))
WIDE = sorted(n for n, e in EXPECTED.items() if e["vocab"] > MAX_CHANNELS)
RETURNED = sorted(n for n in WIDE if EXPECTED[n]["output"] not in ("argmax", "softmax"))  # the head reaches an output
RULES = (split_wide.RULE,)


def head_op(name):
    """The op type of the head as the fixture spells it (a compressed head is a linear of a constexpr weight)."""
    return EXPECTED[name]["op"]


def wide_findings(path):
    return sorted((f.op_type, f.op) for f in lint(path).findings if f.code == "dim-over-16384")


def sizes_of(name):
    vocab, align = EXPECTED[name]["vocab"], EXPECTED[name]["align"]
    return [e - b for b, e in chunk_bounds(vocab, chunk_count(vocab, align=align), align)]


def description(path):
    return read_package(path).spec.description


def output_feature(desc, name):
    [feature] = [f for f in desc.output if f.name == name]
    return feature


# -- the matrix ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", WIDE)
def test_lint_flags_the_head_before(name):
    findings = wide_findings(fixture_path(name, FOLDER))
    head = [f for f in findings if f[0] == head_op(name)]
    assert len(head) == 1, findings  # the head itself; ops reading it (a cast, a softmax) are flagged as well
    assert {t for t, _ in findings} <= {head_op(name), "cast", "squeeze", "transpose", "softmax", "reduce_argmax", "real_div", "tanh", "mul"}


@pytest.mark.parametrize("name", RETURNED)
def test_split_outputs_leaves_nothing_wider_than_the_limit(name, tmp_path):
    src, out = fixture_path(name, FOLDER), str(tmp_path / "out.mlpackage")
    src_outputs = list(main_view(src).main.outputs)
    [output] = src_outputs
    report = optimize_package(src, out, rules=RULES, split_outputs=True)
    sizes, k = sizes_of(name), len(sizes_of(name))
    [chain] = chains(report, "split_wide")
    assert chain.status == REWRITTEN and chain.chunks == k
    [split] = report.functions[0].outputs
    parts = [f"{output}_{i}" for i in range(k)]
    assert (split.status, split.output, split.parts, split.sizes) == ("split", output, parts, sizes)
    assert report.interface_changed and split.descriptions == ["description.output"]

    assert wide_findings(out) == []
    assert "concat" not in op_types(out)
    view = main_view(out)
    assert list(view.main.outputs) == parts
    assert [view.dim(p, split.axis) for p in parts] == sizes

    # the description: one feature per part, in order, the original's type with the part's size along the axis
    original = output_feature(description(src), output)
    desc = description(out)
    assert [f.name for f in desc.output] == parts
    bounds = np.cumsum([0, *sizes])
    for i, part in enumerate(parts):
        feature = output_feature(desc, part)
        shape = list(original.type.multiArrayType.shape)
        shape[split.axis] = sizes[i]
        assert list(feature.type.multiArrayType.shape) == shape
        assert feature.type.multiArrayType.dataType == original.type.multiArrayType.dataType
        assert feature.shortDescription == (
            f"part {i + 1} of {k} of '{output}', [{bounds[i]}:{bounds[i + 1]}] along axis {split.axis}: output channels "
            f"{bounds[i]}-{bounds[i + 1] - 1} of {sum(sizes)} (an LM head's logits for token ids {bounds[i]}-{bounds[i + 1] - 1}); "
            f"concatenate {', '.join(parts)} along axis {split.axis} in order to get '{output}'")
    assert [f.name for f in desc.input] == [f.name for f in description(src).input]
    assert json.loads(desc.metadata.userDefined[METADATA_KEY]) == {"main": {output: {"axis": split.axis, "parts": parts, "sizes": sizes}}}

    # the parts, concatenated as the report says, are the original output exactly; verify compares them so
    feeds = inputs_for(src)
    original_out, parts_out = run_package(src, feeds), run_package(out, feeds)
    np.testing.assert_array_equal(np.concatenate([parts_out[p] for p in parts], axis=split.axis), original_out[output])
    result = verify_packages(src, out)
    assert result.passed and [c.output for c in result.checks] == [output]
    assert f"function 'main': '{output}' compared as {', '.join(parts)} concatenated along axis {split.axis} in order, " \
           f"as optimize --split-outputs recorded in {os.path.abspath(out)}" in [n.replace(out, os.path.abspath(out)) for n in result.notes]


@pytest.mark.parametrize("name", WIDE)
def test_default_optimize_leaves_the_finding_on_the_concat_and_says_so(name, tmp_path):
    src, out = fixture_path(name, FOLDER), str(tmp_path / "out.mlpackage")
    report = optimize_package(src, out, rules=RULES)
    [chain] = chains(report, "split_wide")
    assert chain.status == REWRITTEN
    after = wide_findings(out)
    value = chain.output  # the head's value: the concat takes its name
    assert ("concat", value) in after
    assert head_op(name) not in {t for t, _ in after}  # every chunk is within the limit
    before = wide_findings(fixture_path(name, FOLDER))
    assert {op for _, op in after} == {op for _, op in before}  # the ops after the concat stay flagged as before
    remaining = report.functions[0].lint["remaining"]
    assert [f.get("was") for f in remaining if (f["op_type"], f["op"], f["code"]) == ("concat", value, "dim-over-16384")] == [head_op(name)]
    # the interface is the input's, and the report says where the split would pay
    assert list(main_view(out).main.outputs) == list(main_view(src).main.outputs)
    assert description(out).output == description(src).output
    assert METADATA_KEY not in description(out).metadata.userDefined and not report.interface_changed
    # without the flag a head that cannot be returned as parts is not worth a line
    assert [s.status for s in report.functions[0].outputs] == (["available"] if name in RETURNED else [])


def test_the_optimize_text_names_the_concat_and_the_option(capsys, tmp_path):
    code, out, _ = run(capsys, "optimize", fixture_path("llama_32000_fp16_ios17", FOLDER), tmp_path / "a.mlpackage")
    assert code == 0
    lines = out.splitlines()
    assert ("    lint: 0 findings fixed, 1 remains (dim-over-16384 1), dim-over-16384 now on concat 'logits' (was linear) "
            "(mlopt lint lists them)") in lines
    assert ("    output 'logits' is reassembled by a concat as wide as the head was; --split-outputs returns its 2 parts "
            "as separate outputs logits_0, logits_1 instead") in lines
    code, out, _ = run(capsys, "optimize", fixture_path("llama_32000_fp16_ios17", FOLDER), tmp_path / "b.mlpackage", "--split-outputs")
    assert code == 0
    lines = out.splitlines()
    assert "    lint: 1 finding fixed (dim-over-16384 1), 0 remain (mlopt lint lists them)" in lines
    i = lines.index("    interface changed: output 'logits' is now 2 outputs along axis 2: logits_0 [0:16000], logits_1 [16000:32000]")
    assert lines[i + 1] == ("                   to get 'logits' back, concatenate logits_0, logits_1 along axis 2 in order "
                            "(described in description.output; recorded in the metadata for mlopt verify)")


def test_heads_at_the_limit_are_untouched(tmp_path):
    src, out = fixture_path("head_16384_fp16_ios17", FOLDER), str(tmp_path / "out.mlpackage")
    report = optimize_package(src, out, rules=RULES, split_outputs=True)
    assert chains(report) == [] and report.functions[0].outputs == [] and not report.interface_changed
    assert op_types(out) == op_types(src) and description(out).output == description(src).output


def test_forms_that_reach_the_output_through_per_part_ops(tmp_path):
    """A cast back to fp32 (coremltools' fp16 conversion) and ANEMLL's squeeze + transpose are copied per part."""
    out = str(tmp_path / "cast.mlpackage")
    optimize_package(fixture_path("llama_32000_cast_fp32_io_ios17", FOLDER), out, rules=RULES, split_outputs=True)
    assert op_types(out) == ["cast", "linear", "linear", "cast", "cast"]  # the per-part casts where the cast stood
    view = main_view(out)
    assert [view.dtype(o) for o in view.main.outputs] == [view.dtype(view.function.inputs[0].name)] * 2  # fp32, as before

    out = str(tmp_path / "anemll.mlpackage")
    optimize_package(fixture_path("anemll_151936_conv_squeeze_transpose_fp16_ios18", FOLDER), out, rules=RULES, split_outputs=True)
    assert op_types(out) == ["conv"] * 10 + ["squeeze", "transpose"] * 10
    view = main_view(out)
    assert [[view.dim(o, i) for i in range(3)] for o in view.main.outputs] == [[1, 3, s] for s in sizes_of("anemll_151936_conv_squeeze_transpose_fp16_ios18")]

    out = str(tmp_path / "gemma.mlpackage")  # Gemma 2's soft-capping: elementwise, by one constant number
    optimize_package(fixture_path("gemma2_256000_softcap_fp16_ios18", FOLDER), out, rules=RULES, split_outputs=True)
    assert op_types(out) == ["linear"] * 16 + ["real_div", "tanh", "mul"] * 16


def test_an_elementwise_op_with_a_tensor_operand_keeps_the_concat(tmp_path):
    """logits + a per-token bias vector: the bias would have to be cut too; the concat stays."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    rng = np.random.default_rng(10)
    weight, bias = rng.standard_normal((16400, 4)).astype(np.float16), rng.standard_normal(16400).astype(np.float16)

    @mb.program(input_specs=[mb.TensorSpec((1, 2, 4), dtype=types.fp16)], opset_version=ct.target.iOS17)
    def prog(h):
        return mb.add(x=mb.linear(x=h, weight=weight, name="lm_head"), y=bias, name="logits")

    src = str(tmp_path / "biased.mlpackage")
    ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17, pass_pipeline=ct.PassPipeline.EMPTY,
               compute_precision=ct.precision.FLOAT16, skip_model_load=True).save(src)
    report = optimize_package(src, str(tmp_path / "out.mlpackage"), rules=RULES, split_outputs=True)
    [split] = report.functions[0].outputs
    assert (split.status, split.reason) == ("kept whole", "'lm_head' is no function output: add 'logits' reads it, which "
                                                           "does not act on each part alike")


@pytest.mark.parametrize("name, reason", [
    ("gpt2_50257_argmax_fp16_ios17", "'logits' is also read inside the function, by reduce_argmax 'next_token'"),
    ("llama_32000_softmax_fp16_ios17", "'logits' is no function output: softmax 'probs' reads it, which does not act on each part alike"),
])
def test_a_head_that_is_not_only_returned_keeps_its_concat(name, reason, tmp_path, capsys):
    src, out = fixture_path(name, FOLDER), str(tmp_path / "out.mlpackage")
    report = optimize_package(src, out, rules=RULES, split_outputs=True)
    [split] = report.functions[0].outputs
    assert (split.status, split.reason) == ("kept whole", reason)
    assert not report.interface_changed
    assert list(main_view(out).main.outputs) == list(main_view(src).main.outputs)
    assert description(out).output == description(src).output
    assert "concat" in op_types(out)
    assert verify_packages(src, out).passed
    assert f"    --split-outputs: 'logits' kept whole (the concat stays): {reason}" in report.render().splitlines()


def test_dry_run_says_what_would_change_and_writes_nothing(tmp_path):
    src = fixture_path("llama_32000_fp16_ios17", FOLDER)
    before = tree_digest(src)
    report = optimize_package(src, None, rules=RULES, dry_run=True, split_outputs=True)
    [split] = report.functions[0].outputs
    assert split.status == "would split" and report.interface_changed
    assert report.functions[0].lint["remaining"] == []  # the dry run lints the program as it would be
    assert tree_digest(src) == before


def test_same_input_gives_the_same_bytes(tmp_path):
    src = fixture_path("qwen2_151936_fp16_ios18", FOLDER)
    optimize_package(src, tmp_path / "a.mlpackage", rules=RULES, split_outputs=True)
    optimize_package(src, tmp_path / "b.mlpackage", rules=RULES, split_outputs=True)
    assert tree_digest(tmp_path / "a.mlpackage") == tree_digest(tmp_path / "b.mlpackage")


# -- verify ---------------------------------------------------------------------------------------------------------

def test_verify_compares_either_way_and_says_when_it_cannot(tmp_path):
    src, out = fixture_path("jamba_65536_fp16_ios18", FOLDER), str(tmp_path / "out.mlpackage")
    optimize_package(src, out, rules=RULES, split_outputs=True)
    parts = [f"logits_{i}" for i in range(4)]
    swapped = verify_packages(out, src)  # the split model as the reference: the whole output is cut into its parts
    assert swapped.passed and [c.output for c in swapped.checks] == parts
    assert any(f"'logits' compared as its parts {', '.join(parts)} along axis 2" in n for n in swapped.notes)

    # without the record (metadata stripped), the parts are not tied to 'logits': verify says so and fails
    _edit_spec(out, lambda spec: spec.description.metadata.userDefined.pop(METADATA_KEY))
    result = verify_packages(src, out)
    [check] = result.checks
    assert not result.passed and check.output == "logits"
    assert check.problem == (f"output missing in {result.candidate}, which returns {', '.join(parts)}: no optimize "
                             "--split-outputs record in its metadata says how they form it, so they are not compared with it")


# -- refusals and the Python API --------------------------------------------------------------------------------------

def _head_program(tmp_path, extra=None):
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    weight = np.random.default_rng(8).standard_normal((16400, 4)).astype(np.float16)

    @mb.program(input_specs=[mb.TensorSpec((1, 2, 4), dtype=types.fp16)], opset_version=ct.target.iOS17)
    def prog(h):
        logits = mb.linear(x=h, weight=weight, name="logits")
        return (logits, mb.relu(x=h, name=extra)) if extra else logits

    path = str(tmp_path / "head.mlpackage")
    ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17, pass_pipeline=ct.PassPipeline.EMPTY,
               compute_precision=ct.precision.FLOAT16, skip_model_load=True).save(path)
    return path


def test_a_taken_name_keeps_the_concat(tmp_path):
    src = _head_program(tmp_path, extra="logits_1")
    report = optimize_package(src, str(tmp_path / "out.mlpackage"), rules=RULES, split_outputs=True)
    [split] = report.functions[0].outputs
    assert (split.status, split.reason) == ("kept whole", "the function already has a value named 'logits_1'")


def _edit_spec(path, edit):
    from mlopt.package.proto import Model_pb2

    model = os.path.join(path, "Data", "com.apple.CoreML", "model.mlmodel")
    spec = Model_pb2.Model()
    with open(model, "rb") as f:
        spec.ParseFromString(f.read())
    edit(spec)
    with open(model, "wb") as f:
        f.write(spec.SerializeToString())


def test_a_classifier_description_keeps_the_concat(tmp_path):
    src = _head_program(tmp_path)
    _edit_spec(src, lambda spec: setattr(spec.description, "predictedFeatureName", "logits"))
    out = str(tmp_path / "out.mlpackage")
    report = optimize_package(src, out, rules=RULES, split_outputs=True)
    [split] = report.functions[0].outputs
    assert (split.status, split.reason) == ("kept whole", "description.output names 'logits' as a classifier's prediction")
    assert [o.name for o in description(out).output] == ["logits"] and "concat" in op_types(out)


def test_the_mlmodel_api_takes_the_option_and_leaves_stored_heads_alone(tmp_path):
    """mlopt.optimize(MLModel) writes no weight file, so a stored head is not split (the report says why) and the
    interface stays; optimize_package is the API that splits."""
    import coremltools as ct
    from mlopt import optimize

    src = _head_program(tmp_path)
    model, report = optimize(ct.models.MLModel(src, skip_model_load=True), report=True, rules=RULES, split_outputs=True)
    [chain] = chains(report, "split_wide")
    assert chain.status == "left alone" and "this run writes no weight file" in chain.reason
    assert [o.name for o in model.get_spec().description.output] == ["logits"] and not report.interface_changed


# -- multifunction packages -------------------------------------------------------------------------------------------

def _multifunction(tmp_path):
    """main (the default, described by description.functions) and decode, both the llama head."""
    from coremltools.models.utils import MultiFunctionDescriptor, save_multifunction

    src = fixture_path("llama_32000_fp16_ios17", FOLDER)
    desc = MultiFunctionDescriptor(src)
    desc.add_function(src, "main", "decode")
    desc.default_function_name = "main"
    path = str(tmp_path / "multi.mlpackage")
    save_multifunction(desc, path)
    return path


def test_each_function_of_a_multifunction_package_gets_its_own_description(tmp_path):
    src = _multifunction(tmp_path)
    assert [f.name for f in description(src).functions] == ["main", "decode"] and not description(src).output
    out = str(tmp_path / "out.mlpackage")
    report = optimize_package(src, out, rules=RULES, split_outputs=True)
    splits = {f.name: f.outputs for f in report.functions}
    assert {name: [(s.status, s.descriptions) for s in found] for name, found in splits.items()} == {
        "decode": [("split", ["description.functions['decode']"])],
        "main": [("split", ["description.functions['main']"])],
    }
    desc = description(out)
    assert [[o.name for o in f.output] for f in desc.functions] == [["logits_0", "logits_1"]] * 2
    assert not desc.output  # a multifunction description keeps no top-level outputs
    assert json.loads(desc.metadata.userDefined[METADATA_KEY]).keys() == {"main", "decode"}
    # the two functions share the head's weight (coremltools deduplicates it); they share its chunks too
    records, _ = blob_records(out)
    assert [offset for offset, _ in records] == referenced_offsets(out)
    assert sum(n for _, n in records) == sum(n for _, n in blob_records(src)[0])
    result = verify_packages(src, out)
    assert result.passed and sorted((c.function, c.output) for c in result.checks) == [("decode", "logits"), ("main", "logits")]

    only = str(tmp_path / "only.mlpackage")  # --function decode: main keeps its interface and its concat
    report = optimize_package(src, only, rules=RULES, split_outputs=True, functions=["decode"])
    desc = description(only)
    assert [[o.name for o in f.output] for f in desc.functions] == [["logits"], ["logits_0", "logits_1"]]
    assert list(main_view(only, "main").main.outputs) == ["logits"]
    assert json.loads(desc.metadata.userDefined[METADATA_KEY]).keys() == {"decode"}
    assert verify_packages(src, only).passed


def test_a_function_no_description_lists_is_split_and_the_report_says_so(tmp_path):
    """A function with no entry in description.functions (a hand-edited package): its program changes, no
    description can, and the report says that no description lists it."""
    src = _multifunction(tmp_path)

    def drop_decode(spec):
        kept = [f for f in spec.description.functions if f.name != "decode"]
        del spec.description.functions[:]
        spec.description.functions.extend(kept)

    _edit_spec(src, drop_decode)
    report = optimize_package(src, str(tmp_path / "out.mlpackage"), rules=RULES, split_outputs=True, functions=["decode"])
    [split] = [o for f in report.functions for o in f.outputs]
    assert (split.status, split.descriptions) == ("split", [])
    assert ("                   to get 'logits' back, concatenate logits_0, logits_1 along axis 2 in order (no model "
            "description lists this function; recorded in the metadata for mlopt verify)") in report.render().splitlines()


@pytest.mark.parametrize("record", ["[" * 100_000, "not json", '{"main": {"logits": {"axis": "2", "parts": []}}}',
                                    '{"main": {"logits": {"axis": 2, "parts": ["logits_0", "nope"]}}}'])
def test_verify_ignores_a_record_mlopt_did_not_write(record, tmp_path):
    """A metadata value under mlopt's key that is not its record (hostile, truncated, naming outputs the model
    lacks) ties nothing: the output is missing and says so, never an internal error."""
    src, out = fixture_path("llama_32000_fp16_ios17", FOLDER), str(tmp_path / "out.mlpackage")
    optimize_package(src, out, rules=RULES, split_outputs=True)
    _edit_spec(out, lambda spec: spec.description.metadata.userDefined.__setitem__(METADATA_KEY, record))
    result = verify_packages(src, out)
    [check] = result.checks
    assert not result.passed and check.problem.startswith(f"output missing in {result.candidate}, which returns logits_0, logits_1")


HOSTILE_SIZES = ['["a", "b"]', "[16000.5, 15999.5]", "[-5, 32005]", "[1000000000000, -999999968000]", "[true, 31999]",
                 "[16000]", '"16000,16000"']


@pytest.mark.parametrize("sizes", HOSTILE_SIZES)
def test_a_reference_record_with_hostile_sizes_ties_nothing(sizes, tmp_path):
    """The split model as the reference: the whole output is cut by the record's sizes. Sizes that are not one
    non-negative int per part (a string, a float, a negative size, a huge one whose sum still fits) are not mlopt's
    record: the parts are missing from the candidate and say so - no TypeError, no 7 TiB allocation."""
    src, out = fixture_path("llama_32000_fp16_ios17", FOLDER), str(tmp_path / "out.mlpackage")
    optimize_package(src, out, rules=RULES, split_outputs=True)
    record = '{"main": {"logits": {"axis": 2, "parts": ["logits_0", "logits_1"], "sizes": %s}}}' % sizes
    _edit_spec(out, lambda spec: spec.description.metadata.userDefined.__setitem__(METADATA_KEY, record))
    result = verify_packages(out, src)
    assert not result.passed and [c.output for c in result.checks] == ["logits_0", "logits_1"]
    assert [c.problem for c in result.checks] == [f"output missing in {src}"] * 2


def test_a_record_repeating_a_part_ties_nothing(tmp_path):
    """A part named twice would let a 1 MB record make verify concatenate one output tens of thousands of times."""
    src, out = fixture_path("llama_32000_fp16_ios17", FOLDER), str(tmp_path / "out.mlpackage")
    optimize_package(src, out, rules=RULES, split_outputs=True)
    record = json.dumps({"main": {"logits": {"axis": 2, "parts": ["logits_0"] * 2, "sizes": [16000, 16000]}}})
    _edit_spec(out, lambda spec: spec.description.metadata.userDefined.__setitem__(METADATA_KEY, record))
    result = verify_packages(src, out)
    [check] = result.checks
    assert not result.passed and check.problem.startswith(f"output missing in {result.candidate}, which returns logits_0, logits_1")


def test_the_parts_take_the_place_of_the_output_among_others(tmp_path):
    """A function returning the head and another output: the parts stand where the head stood, in the program and
    in the description."""
    src = _head_program(tmp_path, extra="features")
    out = str(tmp_path / "out.mlpackage")
    optimize_package(src, out, rules=RULES, split_outputs=True)
    assert list(main_view(src).main.outputs) == ["logits", "features"]
    assert list(main_view(out).main.outputs) == ["logits_0", "logits_1", "features"]
    assert [f.name for f in description(out).output] == ["logits_0", "logits_1", "features"]
    assert output_feature(description(out), "features") == output_feature(description(src), "features")


def test_batch_mode_lists_the_models_whose_interface_changed(capsys, tmp_path):
    code, out, _ = run(capsys, "optimize", fixture_path("llama_32000_fp16_ios17", FOLDER), fixture_path("head_16384_fp16_ios17", FOLDER),
                       "--out-dir", tmp_path / "again", "--split-outputs")
    assert code == 0
    assert out.splitlines()[-1] == ("interface changed (--split-outputs; --json says how to reassemble): "
                                    f"{fixture_path('llama_32000_fp16_ios17', FOLDER)}")
    assert [f.name for f in description(str(tmp_path / "again" / "llama_32000_fp16_ios17.mlpackage")).output] == ["logits_0", "logits_1"]


def test_top_level_outputs_describe_the_default_function_only(tmp_path):
    """A multifunction description that also lists top-level outputs (they describe the default function, main):
    splitting main updates both; splitting decode leaves them; a top-level list that lacks the output keeps
    main's concat, with the reason."""
    src = _multifunction(tmp_path)
    _edit_spec(src, lambda spec: spec.description.output.extend(spec.description.functions[0].output))
    assert [o.name for o in description(src).output] == ["logits"]

    both = str(tmp_path / "both.mlpackage")
    report = optimize_package(src, both, rules=RULES, split_outputs=True)
    assert {f.name: f.outputs[0].descriptions for f in report.functions} == {
        "main": ["description.functions['main']", "description.output"], "decode": ["description.functions['decode']"]}
    assert [o.name for o in description(both).output] == ["logits_0", "logits_1"]

    decode = str(tmp_path / "decode.mlpackage")
    optimize_package(src, decode, rules=RULES, split_outputs=True, functions=["decode"])
    assert [o.name for o in description(decode).output] == ["logits"]

    _edit_spec(src, lambda spec: setattr(spec.description.output[0], "name", "scores"))
    report = optimize_package(src, str(tmp_path / "refused.mlpackage"), rules=RULES, split_outputs=True)
    splits = {f.name: (f.outputs[0].status, f.outputs[0].reason) for f in report.functions}
    assert splits == {"main": ("kept whole", "description.output does not list output 'logits' once"), "decode": ("split", None)}
