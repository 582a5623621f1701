"""The fp16_headroom rule (docs/headroom.md) on the fixtures of fixtures/make_headroom_fixtures.py: what it rewrites
(op sequences, alpha, the moved epsilons and scaled constants), that the rewrite computes the original's float64
function, that the audit's overflow finding is gone, what it leaves alone and why, compressed weights scaled in
their compressed form, composition with the norm rules in one run and across runs, and that wrong lowerings are
caught by the proof."""

import json
import os

import numpy as np
import pytest

from conftest import FIXTURES, fixture_path, main_view, run, run_package, tree_digest
from mlopt import optimize_package
from mlopt.analyses.audit import audit_package
from mlopt.report import LEFT_ALONE, REWRITTEN
from mlopt.rules.fp16_headroom import Fp16HeadroomRule

FOLDER = "headroom"
EXPECTED = json.load(open(os.path.join(FIXTURES, FOLDER, "expected.json")))


def path(name):
    return fixture_path(name, FOLDER)


def inputs(name):
    return os.path.join(FIXTURES, FOLDER, f"{name}.inputs.npz")


def feeds(name):
    return dict(np.load(inputs(name)))


def headroom(tmp_path, name, rules=(), **kwargs):
    """optimize_package with --headroom on the fixture's inputs; `rules=()`: the headroom pass alone."""
    out = str(tmp_path / f"{name}.{len(os.listdir(tmp_path))}.mlpackage")
    report = optimize_package(path(name), out, rules=rules, headroom=True, inputs=inputs(name), **kwargs)
    return out, report


def stream_chain(report):
    (chain,) = [c for f in report.functions for c in f.chains if c.rule == "fp16_headroom"]
    return chain


def weighted_view(p):
    """The main function of package `p` with its weight file readable (and the reader to close)."""
    from mlopt.graph import SpecGraph
    from mlopt.graph.stored_constants import StoredConstants
    from mlopt.package import read_package
    from mlopt.package.weights import BlobReader

    package = read_package(p)
    blobs = BlobReader(os.path.dirname(package.model_path))
    return SpecGraph("main", package.spec.mlProgram.functions["main"], stored=StoredConstants(blobs)), blobs


def const_of(view, op_output, param):
    """The constant bound to `param` of the op producing `op_output`."""
    op = view.producer(op_output)
    return np.asarray(view.const(op, param), np.float64)


def test_gemma_stream_scaled_by_power_of_two_with_epsilons_moved(tmp_path):
    name = "gemma_postnorm_fp32_ios17"
    out, report = headroom(tmp_path, name)
    chain = stream_chain(report)
    assert chain.status == REWRITTEN, chain.reason
    fields = chain.fields
    # peak 1.069e5 must drop to 65504 / 2^2 = 16376: alpha = 2^-ceil(log2(1.069e5 / 16376)) = 2^-3
    assert fields["alpha"] == 0.125
    assert fields["peak_before"] == pytest.approx(EXPECTED[name]["stream_peak_fp64"], rel=1e-5)
    assert fields["peak_after"] == pytest.approx(fields["peak_before"] / 8)
    assert (fields["stream_first"], fields["stream_last"], fields["adds"]) == ("x_11", "x_55", 6)
    assert (fields["entries_folded"], fields["entries_inserted"], fields["norm_readers"]) == (4, 3, 7)
    assert "alpha 2^-3" in chain.summary and "1.069e+05 -> 1.337e+04" in chain.summary
    before, after = main_view(path(name)), main_view(out)
    # the source: the embedding times sqrt(64) = 8 becomes times 1
    assert const_of(before, "x_1", "y") == 8.0 and const_of(after, "x_1", "y") == 1.0
    # every epsilon of a norm reading the stream moves by alpha^2 = 2^-6 (fp32: exactly)
    eps_adds = [op for op in before.ops() if op.type == "add" and before.const(op, "y") is not None
                and before.const(op, "y").size == 1 and before.consumers(before.output(op))[0].op.type == "rsqrt"]
    moved = 0
    for op in eps_adds:
        old = float(before.const(op, "y"))
        new = float(after.const(after.producer(before.output(op)), "y"))
        assert new in (old, old / 64)  # norms of the blocks' own outputs (post-norms) keep theirs
        moved += new == old / 64
    assert moved == 7
    # post-norm contributions without a gamma get a mul by alpha where the add reads them
    types_before = [op.type for op in before.main.operations if op.type != "const"]
    types_after = [op.type for op in after.main.operations if op.type != "const"]
    assert types_after.count("mul") == types_before.count("mul") + 3
    assert len(types_after) == len(types_before) + 3
    # Gemma's post-feedforward gamma (1 + w, 4500 on channel 7) is scaled by alpha in place
    gammas = [v for v in ("output_15", "output_31", "output_47")]
    for g in gammas:
        np.testing.assert_array_equal(const_of(after, g, "y"), const_of(before, g, "y") / 8)


def test_gemma_fp32_rewrite_equals_the_original_in_float64(tmp_path):
    name = "gemma_postnorm_fp32_ios17"
    out, _ = headroom(tmp_path, name)
    original = run_package(path(name), feeds(name), float_dtype=np.float64)
    rewritten = run_package(out, feeds(name), float_dtype=np.float64)
    for key in original:
        np.testing.assert_allclose(rewritten[key], original[key], rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", ["gemma_postnorm_fp16_ios17", "llama_hot_fp16_ios17"])
def test_composed_with_rms_norm_the_audit_finding_is_gone_and_outputs_match_float64(tmp_path, name):
    before = audit_package(path(name), inputs_path=inputs(name))
    assert any(f.kind == "overflow" and f.op_type == "add" for f in before.findings)
    out, report = headroom(tmp_path, name, rules=None)  # the default rules, then the headroom pass
    assert stream_chain(report).status == REWRITTEN
    assert {c.rule for f in report.functions for c in f.chains if c.status == REWRITTEN} == {"rms_norm", "fp16_headroom"}
    after = audit_package(out, inputs_path=inputs(name))
    assert after.findings == []
    # the original fp16 program is wrong (inf inside, its output off by 100%); the rewrite is within fp16 tolerance
    reference = run_package(path(name), feeds(name), float_dtype=np.float64)
    original, rewritten = run_package(path(name), feeds(name)), run_package(out, feeds(name))
    for key, truth in reference.items():
        scale = np.abs(truth).max()
        assert np.abs(original[key] - truth).max() / scale > 0.5
        assert np.abs(rewritten[key].astype(np.float64) - truth).max() / scale < 1e-2


def test_fp16_epsilon_that_fp16_cannot_scale_is_rounded_and_said(tmp_path):
    name = "gemma_postnorm_fp16_ios17"
    out, report = headroom(tmp_path, name)
    chain = stream_chain(report)
    assert chain.status == REWRITTEN, chain.reason
    assert chain.fields["eps_rounded"] == 7
    eps16 = np.float16(1e-6)  # 17 * 2^-24: x 2^-6 is below half the smallest subnormal, it would round to 0
    assert float(np.float16(np.float64(eps16) / 64)) == 0.0
    # stored as fp16's smallest subnormal instead: an all-zero row still gives 0, not 0/0
    assert ("7 epsilons cannot hold eps x 0.015625 exactly in fp16 (e.g. 1.013e-06 x 0.015625 = 1.583e-08 -> stored "
            "5.96e-08, the smallest fp16 subnormal, as 0 would make an all-zero row NaN): stored rounded") in chain.note
    after = main_view(out)
    add = after.producer("var_86_cast_fp16")
    assert float(after.const(add, "y")) == 2.0**-24


def test_llama_hot_weights_that_underflow_are_counted(tmp_path):
    name = "llama_hot_fp16_ios17"
    out, report = headroom(tmp_path, name)
    chain = stream_chain(report)
    assert chain.status == REWRITTEN, chain.reason
    before, blobs = weighted_view(path(name))
    stream = {"x_7_cast_fp16", "x_11_cast_fp16", "x_17_cast_fp16", "x_21_cast_fp16", "x_27_cast_fp16", "x_31_cast_fp16"}
    assert (chain.fields["stream_first"], chain.fields["stream_last"]) == ("x_7_cast_fp16", "x_31_cast_fp16")
    folded = [op for op in before.ops() if op.type == "linear"
              and any(u.op is not None and u.op.type == "add" and u.op.outputs[0].name in stream
                      for u in before.consumers(before.output(op)))]
    assert len(folded) == 6  # o_proj and down_proj of three layers
    expected = 0
    for op in folded:
        w = np.concatenate(list(before.const_chunks(before.arg(op, "weight")))).astype(np.float64) / 8
        expected += int(np.count_nonzero(w.astype(np.float16).astype(np.float64) != w))
    blobs.close()
    assert expected > 0 and chain.fields["weights_underflowed"] == expected
    assert f"{expected} weight elements underflow when scaled" in chain.note


def test_healthy_llama_is_left_byte_identical_with_the_reason(tmp_path):
    name = "llama_prenorm_fp16_ios17"
    out, report = headroom(tmp_path, name)
    chain = stream_chain(report)
    assert chain.status == LEFT_ALONE
    peak = EXPECTED[name]["stream_peak_fp64"]
    assert f"float64 peak {peak:.3g}" in chain.reason and "leaves 14.1 bits below 65504" in chain.reason and "alpha = 1, nothing to do" in chain.reason
    assert tree_digest(out) == tree_digest(path(name))


def test_a_head_reading_the_stream_leaves_it_alone(tmp_path):
    name = "gemma_head_on_stream_fp16_ios17"
    out, report = headroom(tmp_path, name)
    chain = stream_chain(report)
    assert chain.status == LEFT_ALONE
    assert chain.reason == ("stream 'x_11_cast_fp16' .. 'h_cast_fp16' left alone: the stream value 'h_cast_fp16' is "
                            "read by linear 'op_535_cast_fp16', which is not a norm (only norms read a scaled stream "
                            "unchanged)")
    assert tree_digest(out) == tree_digest(path(name))


@pytest.mark.parametrize("name, compressed, param", [
    ("llama_hot_palettized_fp16_ios17", "constexpr_lut_to_dense", "lut"),
    ("llama_hot_int8_fp16_ios17", "constexpr_affine_dequantize", "scale"),
    ("llama_hot_int8_fp16_ios18", "constexpr_blockwise_shift_scale", "scale"),
    ("llama_hot_pruned_fp16_ios18", "constexpr_sparse_to_dense", "nonzero_data"),
])
def test_compressed_weights_are_scaled_in_their_lut_or_scale(tmp_path, name, compressed, param):
    from mlopt.graph.values import decode_value
    from mlopt.package.weights import BlobReader
    from mlopt.graph.stored_constants import StoredConstants
    from mlopt.rewrites.compressed_scaling import held_param

    out, report = headroom(tmp_path, name)
    assert stream_chain(report).status == REWRITTEN
    assert stream_chain(report).fields["entries_folded"] == 6

    def params(p):
        view = main_view(p)
        blobs = BlobReader(os.path.join(p, "Data", "com.apple.CoreML"))
        stored = StoredConstants(blobs)
        found = {}
        for op in view.ops():
            if op.type == compressed:
                held = held_param(op, param)
                value = decode_value(held) if held.WhichOneof("value") != "blobFileValue" else stored.small(held)
                found[op.outputs[0].name] = np.asarray(value, np.float64)
        blobs.close()
        types = [op.type for op in view.main.operations if op.type != "const"]
        return found, types

    old, old_types = params(path(name))
    new, new_types = params(out)
    assert old_types.count(compressed) == new_types.count(compressed) >= 20  # nothing expanded, nothing left dead
    assert big_consts(out) == big_consts(path(name))  # no weight decompressed into a plain constant
    scaled = [k for k in new if k not in old]
    assert len(scaled) == 6
    originals = list(old.values())
    for k in scaled:
        assert any(v.shape == new[k].shape and np.array_equal(v / 8, new[k]) for v in originals)


def big_consts(p):
    """How many const ops of package `p` hold 1024 elements or more (a weight, as the compressors' threshold)."""
    import math

    view = main_view(p)
    return sum(1 for op in view.ops() if op.type == "const" and op.outputs[0].type.tensorType.dimensions
               and math.prod(d.constant.size for d in op.outputs[0].type.tensorType.dimensions) >= 1024)


def test_same_bytes_twice(tmp_path):
    first, _ = headroom(tmp_path, "llama_hot_int8_fp16_ios17", rules=None)
    second, _ = headroom(tmp_path, "llama_hot_int8_fp16_ios17", rules=None)
    assert tree_digest(first) == tree_digest(second)


def test_headroom_first_then_rms_norm_in_a_second_run(tmp_path):
    name = "gemma_postnorm_fp16_ios17"
    scaled, report = headroom(tmp_path, name)
    assert stream_chain(report).status == REWRITTEN
    out = str(tmp_path / "then_rms.mlpackage")
    second = optimize_package(scaled, out)
    assert sum(c.status == REWRITTEN for f in second.functions for c in f.chains if c.rule == "rms_norm") == 13
    assert audit_package(out, inputs_path=inputs(name)).findings == []
    truth = run_package(path(name), feeds(name), float_dtype=np.float64)
    rewritten = run_package(out, feeds(name))
    for key, value in truth.items():
        assert np.abs(rewritten[key].astype(np.float64) - value).max() / np.abs(value).max() < 1e-2


def test_rms_norm_first_then_headroom_in_a_second_run(tmp_path):
    name = "llama_hot_fp16_ios17"
    normed = str(tmp_path / "normed.mlpackage")
    optimize_package(path(name), normed)
    peaks = {}
    for row in audit_package(path(name), inputs_path=inputs(name)).rows:  # the names of the stream survive
        peaks.setdefault(row.function, {})[row.op] = row.peak_abs_fp64
    out = str(tmp_path / "then_headroom.mlpackage")
    report = optimize_package(normed, out, rules=(Fp16HeadroomRule(peaks=peaks),))
    chain = stream_chain(report)
    assert chain.status == REWRITTEN and chain.form == "residual stream: 6 adds, 6 norms reading it"
    assert chain.fields["eps_rounded"] == 0  # the trick's layer_norm epsilon is fp32 from iOS17
    assert audit_package(out, inputs_path=inputs(name)).findings == []


# -- wrong lowerings are caught ---------------------------------------------------------------------------------------
RIGHT = Fp16HeadroomRule.lower


def eps_not_moved(self, b, fused):
    """Every site right except the epsilons, rebuilt as they were."""
    if "epsilon" in fused.site.data:
        return b.same_op(fused.site.op.outputs[0].name)
    return RIGHT(self, b, fused)


def one_contribution_not_scaled(self, b, fused):
    """The first folded contribution rebuilt unscaled, every other site right."""
    if "scale" in fused.site.data and not getattr(self, "skipped", False):
        self.skipped = True
        return b.same_op(fused.site.op.outputs[0].name)
    return RIGHT(self, b, fused)


@pytest.mark.parametrize("wrong, name, reason", [
    (eps_not_moved, "gemma_postnorm_fp32_ios17", "exact proof failed: in float64 the rewrite differs from the original at"),
    (one_contribution_not_scaled, "gemma_postnorm_fp32_ios17", "proof failed: the rewrite differs from the ResidualStream chain at"),
    (one_contribution_not_scaled, "llama_hot_fp16_ios17", "proof failed: the rewrite differs from the ResidualStream chain at"),
])
def test_a_wrong_lowering_is_caught_by_the_proof(tmp_path, monkeypatch, wrong, name, reason):
    monkeypatch.setattr(Fp16HeadroomRule, "lower", wrong)
    out, report = headroom(tmp_path, name)
    chain = stream_chain(report)
    assert chain.status == LEFT_ALONE
    assert reason in chain.reason and chain.reason.endswith("rolled back")
    assert tree_digest(out) == tree_digest(path(name))


# -- the command line -------------------------------------------------------------------------------------------------

def test_cli_headroom_target_and_audit(tmp_path, capsys):
    name = "llama_hot_fp16_ios17"
    out = tmp_path / "o.mlpackage"
    code, stdout, _ = run(capsys, "optimize", path(name), out, "--headroom", "--headroom-target", "4", "--inputs",
                          inputs(name), "--audit", "--json")
    assert code == 0
    data = json.loads(stdout)
    (chain,) = [c for f in data["functions"] for c in f["chains"] if c["rule"] == "fp16_headroom"]
    # 9.94e4 down to 65504 / 2^4 = 4094: alpha 2^-5
    assert chain["status"] == REWRITTEN and chain["alpha"] == 2.0**-5
    assert chain["peak_after"] == pytest.approx(chain["peak_before"] / 32)
    assert data["audit"]["before"]["findings"] and not data["audit"]["after"]["findings"]


def test_cli_bad_headroom_target(tmp_path, capsys):
    code, _, err = run(capsys, "optimize", path("llama_hot_fp16_ios17"), tmp_path / "o.mlpackage", "--headroom",
                       "--headroom-target", "-1")
    assert code == 2
    assert err.strip().splitlines()[-1] == "mlopt: error: --headroom-target: headroom target -1.0: expected a number of bits from 0 to 15"
    assert not (tmp_path / "o.mlpackage").exists()


def test_python_api_mlmodel(tmp_path):
    import coremltools as ct

    import mlopt

    name = "llama_hot_fp16_ios17"
    model = ct.models.MLModel(path(name), skip_model_load=True)
    new, report = mlopt.optimize(model, report=True, rules=(), headroom=True, inputs=inputs(name))
    chain = stream_chain(report)
    assert chain.status == REWRITTEN and chain.fields["alpha"] == 0.125
    # no weight file is written here: a stored weight is not scaled in place, a mul by alpha follows its linear
    spec = new.get_spec().mlProgram.functions["main"]
    before = main_view(path(name))
    assert sum(op.type == "mul" for op in spec.block_specializations["CoreML7"].operations) == \
        sum(op.type == "mul" for op in before.main.operations) + 7
    saved = str(tmp_path / "saved.mlpackage")
    new.save(saved)
    truth = run_package(path(name), feeds(name), float_dtype=np.float64)
    got = run_package(saved, feeds(name), float_dtype=np.float64)
    for key, value in truth.items():  # fp16 epsilons rounded (ROUNDED proof): equal up to that
        np.testing.assert_allclose(got[key], value, rtol=1e-3, atol=1e-3 * np.abs(value).max())


@pytest.mark.parametrize("folder, name, alpha, inserted", [
    ("real", "decoder_llama_mixed_ios18", 0.5, 5),  # an fp32 stream read by fp16 norms through casts
    ("", "decoder_fp16_ios17", 0.25, 3),  # the stream starts at the function input: a mul at the first add
])
def test_other_streams_with_a_demanding_target(tmp_path, folder, name, alpha, inserted):
    """A target of 15 bits forces alpha < 1 on healthy streams: streams of other shapes are rewritten exactly."""
    src, out = fixture_path(name, folder), str(tmp_path / "o.mlpackage")
    report = optimize_package(src, out, rules=(), headroom=True, headroom_target=15)
    chain = stream_chain(report)
    assert chain.status == REWRITTEN, chain.reason
    assert (chain.fields["alpha"], chain.fields["entries_inserted"]) == (alpha, inserted)
    from conftest import inputs_for

    feeds = inputs_for(src)
    original = run_package(src, feeds, float_dtype=np.float64)
    rewritten = run_package(out, feeds, float_dtype=np.float64)
    for key in original:  # fp16 epsilons are rounded (ROUNDED proof): equal up to that
        np.testing.assert_allclose(rewritten[key], original[key], rtol=1e-12 if chain.fields["eps_rounded"] == 0 else 1e-3, atol=0)


def test_cli_headroom_on_a_model_the_audit_cannot_run_writes_nothing(tmp_path, capsys):
    src, out = fixture_path("unsupported_ops_fp16_ios17", "lint"), tmp_path / "o.mlpackage"
    code, _, err = run(capsys, "optimize", src, out, "--headroom")
    assert code == 3  # CANNOT_VERIFY: the peaks --headroom needs cannot be measured
    assert err.strip().splitlines()[-1] == (
        f"mlopt: error: {src}: cannot be audited: function 'main': no implementation of MIL op 'lstm' (op 'lstm')")
    assert not out.exists()


def test_cli_headroom_is_for_one_model(tmp_path, capsys):
    code, _, err = run(capsys, "optimize", path("llama_hot_fp16_ios17"), "--out-dir", tmp_path / "d", "--headroom")
    assert code == 2
    assert err.strip().splitlines()[-1].endswith("--headroom is for one model (mlopt optimize IN OUT --headroom): its peaks come from that model's audit")


def test_epsilon_sites_move_by_the_power_the_chain_needs(tmp_path):
    """eps under the root moves by alpha^2, an eps added to a standard deviation (x / (std + eps), the Annotated
    Transformer's LayerNorm) by alpha, layer_norm's by alpha^2."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb

    from mlopt.rules.fp16_headroom_stream import epsilon_sites

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 8))], opset_version=ct.target.iOS17)
    def prog(x):
        ms = mb.reduce_mean(x=mb.square(x=x), axes=[-1], keep_dims=True)
        a = mb.mul(x=x, y=mb.rsqrt(x=mb.add(x=ms, y=np.float32(1e-5), name="under_root"), name="root"))
        b = mb.real_div(x=x, y=mb.add(x=mb.sqrt(x=ms), y=np.float32(1e-5), name="after_sqrt"))
        c = mb.layer_norm(x=x, axes=[-1], epsilon=np.float32(1e-5), name="native")
        return mb.add(x=mb.add(x=a, y=b), y=c)

    out = str(tmp_path / "eps.mlpackage")
    ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17, pass_pipeline=ct.PassPipeline.EMPTY,
               compute_precision=ct.precision.FLOAT32, skip_model_load=True).save(out)
    view = main_view(out)
    sites = {(view.op_name(op), param, power) for op, param, power in epsilon_sites(view, list(view.ops()))}
    assert sites == {("under_root", "y", 2), ("root", "epsilon", 2), ("after_sqrt", "y", 1), ("native", "epsilon", 2)}


def test_no_conversion_time_passes():
    from mlopt.coreml import pass_pipeline

    with pytest.raises(ValueError, match="^the fp16_headroom rule rewrites saved programs only \\(mlopt optimize\\); it has no conversion-time passes$"):
        pass_pipeline(rules=(Fp16HeadroomRule(),))


def test_rms_norms_left_decomposed_say_their_square_still_overflows(tmp_path):
    """With compute units CPU_ONLY the rms_norm rule does not rewrite: the stream is scaled, its fp16 RMSNorms
    still square it past 65504. The note says so (the audit of the output agrees); with the trick it does not."""
    name = "gemma_postnorm_fp16_ios17"
    out, report = headroom(tmp_path, name, rules=None, compute_units="CPU_ONLY")
    chain = stream_chain(report)
    n, after = chain.fields["norm_readers"], chain.fields["peak_after"]
    assert chain.status == REWRITTEN and after > 256
    assert chain.note.endswith(
        f"; {n} RMSNorm chains reading it square it in fp16 as written: x^2 passes 65504 once |x| > 256, and the peak "
        f"is {after:.4g} after scaling, so they still overflow unless the rms_norm rule rewrites them (compute units "
        f"CPU_AND_NE)")
    assert any(f.kind == "overflow" and f.op_type == "pow" for f in audit_package(out).findings)
    _, report = headroom(tmp_path, name, rules=None)
    assert "RMSNorm chain" not in stream_chain(report).note


def test_dry_run_headroom_sees_the_first_pass_and_reports_what_a_real_run_writes(tmp_path):
    """`--dry-run --headroom` used to run the headroom pass on the program as it was (the dry run's rewrites went
    into per-function copies): it saw the decomposed RMSNorms and said their square still overflowed. It now reads
    a copy of the program with the first pass's rewrites: the same chains as the real run, "would rewrite"."""
    from mlopt.report import WOULD_REWRITE

    name = "gemma_postnorm_fp16_ios17"
    digest = tree_digest(path(name))
    dry = optimize_package(path(name), None, dry_run=True, headroom=True, inputs=inputs(name))
    assert tree_digest(path(name)) == digest
    _, real = headroom(tmp_path, name, rules=None)
    chains = [[c.to_dict() for f in r.functions for c in f.chains] for r in (dry, real)]
    assert [c["status"] for c in chains[0]] == [WOULD_REWRITE] * len(chains[1])
    assert [{**c, "status": None} for c in chains[0]] == [{**c, "status": None} for c in chains[1]]
    assert stream_chain(dry).note == "every value of the stream is multiplied by 0.125; norms read it unchanged"


def _rms_stream_package(tmp_path):
    """A stream `s = x + linear(x)` read by two RMSNorms: one with its epsilon under the root, one without."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb

    w = (np.eye(16) * 40).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 16))], opset_version=ct.target.iOS17)
    def prog(x):
        s = mb.add(x=x, y=mb.linear(x=x, weight=w), name="s")
        ms = mb.reduce_mean(x=mb.square(x=s), axes=[-1], keep_dims=True)
        a = mb.mul(x=s, y=mb.rsqrt(x=mb.add(x=ms, y=np.float32(1e-5))))
        b = mb.real_div(x=s, y=mb.sqrt(x=mb.reduce_mean(x=mb.square(x=s), axes=[-1], keep_dims=True)))
        return mb.add(x=mb.linear(x=a, weight=w), y=mb.linear(x=b, weight=w))

    out = str(tmp_path / "two_norms.mlpackage")
    ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17, pass_pipeline=ct.PassPipeline.EMPTY,
               compute_precision=ct.precision.FLOAT32, skip_model_load=True).save(out)
    return out


def test_summary_says_how_each_norms_epsilon_moved(tmp_path):
    """The summary used to say "2 norms with epsilon x 2^(2 log2 alpha)" for every norm: a norm without an epsilon
    (x / sqrt(mean(x^2))) moves none, and one whose epsilon is added to a standard deviation moves it by alpha."""
    src = _rms_stream_package(tmp_path)
    report = optimize_package(src, str(tmp_path / "o.mlpackage"), rules=(), headroom=True, headroom_target=15)
    chain = stream_chain(report)
    assert chain.status == REWRITTEN and chain.fields["alpha"] == 2.0**-6
    peak = chain.fields["peak_before"]
    assert chain.summary == (
        f"stream 's' .. 's' (1 add), alpha 2^-6, float64 peak {peak:.4g} -> {peak / 64:.4g} ({np.log2(65504 / peak):.1f} "
        f"-> {np.log2(65504 / peak) + 6:.1f} bits below 65504); 1 entry folded into their constants, 1 scaled by an "
        f"inserted mul, 1 norm with epsilon x 2^-12, 1 without an epsilon")


def test_epsilon_text_per_power():
    """x / (std + eps) readers (epsilon_sites power 1) are counted apart from the epsilons under a root."""
    from mlopt.rules.fp16_headroom import _epsilon_powers, _epsilon_text
    from mlopt.rules.fp16_headroom_stream import Reader

    def reader(*powers):
        r = Reader("LayerNorm", "x", (), "y")
        r.eps = [(object(), "y", p) for p in powers]
        return r

    readers = [reader(2)] * 5 + [reader(1), reader(2, 2)]
    assert _epsilon_text(_epsilon_powers(readers), -3) == "6 norms with epsilon x 2^-6, 1 with epsilon x 2^-3"
    assert _epsilon_text(_epsilon_powers([reader(2)] * 7), -3) == "7 norms with epsilon x 2^-6"
    assert _epsilon_text(_epsilon_powers([reader(1), reader()]), -1) == "1 norm with epsilon x 2^-1, 1 without an epsilon"
    assert _epsilon_text(_epsilon_powers([reader(1, 2)]), -2) == "1 norm with epsilons x 2^-4 and 2^-2"


@pytest.mark.parametrize("src, npz", [
    (path("gemma_postnorm_fp16_ios17"), inputs("gemma_postnorm_fp16_ios17")),
    (os.path.join(FIXTURES, "audit", "gemma_residual_fp16_ios17.mlpackage"), os.path.join(FIXTURES, "audit", "gemma_residual_fp16_ios17.inputs.npz")),
])
def test_peaks_measured_after_the_norm_rewrites_give_the_alpha_of_the_input(tmp_path, src, npz):
    """The peaks are measured on the program the first pass produced: rms_norm's rewrite leaves the stream's
    float64 values as they were, so one run gives the alpha and peak of the headroom pass alone on IN."""
    alone = stream_chain(optimize_package(src, str(tmp_path / "a.mlpackage"), rules=(), headroom=True, inputs=npz))
    after = optimize_package(src, str(tmp_path / "b.mlpackage"), headroom=True, inputs=npz)
    assert {c.rule for f in after.functions for c in f.chains if c.status == REWRITTEN} == {"rms_norm", "fp16_headroom"}
    both = stream_chain(after)
    assert (both.fields["alpha"], alone.fields["alpha"]) == (0.125, 0.125)
    assert both.fields["peak_before"] == pytest.approx(alone.fields["peak_before"], rel=1e-9)
    assert (both.fields["stream_first"], both.fields["stream_last"]) == (alone.fields["stream_first"], alone.fields["stream_last"])


def _stream_in_a_body(tmp_path, kind):
    """A hot residual stream (3 adds, 4 RMSNorms reading it) as the body of a cond or a while_loop."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    rng = np.random.default_rng(0)
    weights = [(rng.standard_normal((64, 64)) * 600).astype(np.float16) for _ in range(3)]

    def rms(x):
        mean = mb.reduce_mean(x=mb.mul(x=x, y=x), axes=[-1], keep_dims=True)
        return mb.mul(x=x, y=mb.rsqrt(x=mb.add(x=mean, y=np.float16(1e-5))))

    def body(x):
        h = mb.mul(x=x, y=np.float16(900.0))
        for w in weights:
            h = mb.add(x=h, y=mb.linear(x=rms(h), weight=w))
        return rms(h)

    @mb.program(input_specs=[mb.TensorSpec((1, 4, 64), dtype=types.fp16), mb.TensorSpec((1,), dtype=types.int32)],
                opset_version=ct.target.iOS17)
    def prog(x, flag):
        if kind == "cond":
            taken = mb.squeeze(x=mb.greater(x=flag, y=np.int32(-1)))
            return mb.cond(pred=taken, _true_fn=lambda: body(x), _false_fn=lambda: mb.identity(x=x))
        _, out = mb.while_loop(_cond=lambda i, v: mb.less(x=i, y=np.int32(1)),
                               _body=lambda i, v: (mb.add(x=i, y=np.int32(1)), body(v)), loop_vars=(np.int32(0), x))
        return out

    path = str(tmp_path / f"{kind}.mlpackage")
    ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17, pass_pipeline=ct.PassPipeline.EMPTY,
               compute_precision=ct.precision.FLOAT16, skip_model_load=True).save(path)
    return path


@pytest.mark.parametrize("kind", ["cond", "while"])
def test_a_stream_inside_a_cond_or_loop_body_is_left_alone_and_says_why(tmp_path, kind):
    """The audit measures the function's own ops, not those of a nested body: the stream there has no peak, and
    the reason says where it lies (it said only that no peak was measured for one of its values)."""
    src, out = _stream_in_a_body(tmp_path, kind), str(tmp_path / "out.mlpackage")
    report = optimize_package(src, out, rules=(), headroom=True)
    chain = stream_chain(report)
    assert chain.status == LEFT_ALONE
    assert chain.reason.endswith("left alone: it lies inside the body of a cond or while_loop, whose values the audit "
                                 "does not measure"), chain.reason
    assert tree_digest(out) == tree_digest(src)
