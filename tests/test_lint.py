"""`mlopt lint`: the exact code at the exact op of each fixture (fixtures/make_lint_fixtures.py), no finding on a
clean fp16 model, the switch estimate, exit codes, bad input, JSON, the Python API, and what `optimize` says about
the findings its rules fixed."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import FIXTURES, fixture_path, tree_digest
from json_schema import errors
from mlopt.analyses import ane_limits
from mlopt.analyses.lint import lint
from mlopt.cli import main

with open(os.path.join(os.path.dirname(FIXTURES), "mlopt", "report.schema.json")) as f:
    SCHEMA = json.load(f)
MODEL = os.path.join("Data", "com.apple.CoreML", "model.mlmodel")


def lint_fixture(name):
    return os.path.join(FIXTURES, "lint", f"{name}.mlpackage")


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# fixture -> (findings as (op, code) in program order, ops that run, ops at risk, estimated switches)
EXPECTED = {
    "wide_linear_fp16_ios17": ([("logits", "dim-over-16384"), ("top", "dim-over-16384")], 5, 2, 2),
    "rank6_fp16_ios17": ([("to_rank6", "rank-over-5"), ("relu6", "rank-over-5"), ("to_rank4", "rank-over-5")], 4, 3, 1),
    "int_arith_ios17": ([("ids_plus_3", "int-arith"), ("ids_times_2", "int-arith")], 4, 2, 1),
    # coremltools 9 guards a gather's run-time indices against negative values with int32 greater_equal/add/select
    "large_gather_fp16_ios17": (
        [("greater_equal_0", "int-arith"), ("add_0", "int-arith"), ("select_0", "int-arith"),
         ("embed_cast_uint16_cast_uint16", "large-gather")], 8, 4, 6,
    ),
    "dynamic_shape_fp16_ios17": ([("scaled", "dynamic-shape"), ("pooled", "dynamic-shape")], 3, 2, 1),
    "fp32_island_ios17": ([("exp_fp32", "fp32")], 5, 1, 2),
    "unsupported_ops_fp16_ios17": (
        [("lstm_0", "unsupported-op"), ("greater_equal_0", "int-arith"), ("add_1", "int-arith"), ("select_0", "int-arith"),
         ("small_gather", "unsupported-op"), ("loop", "unsupported-op")], 14, 6, 6,
    ),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_fixture_gets_its_code_at_its_ops(name):
    findings, ops, at_risk, switches = EXPECTED[name]
    report = lint(lint_fixture(name))
    (fn,) = report.functions
    assert [(f.op, f.code) for f in fn.findings] == findings
    assert (fn.ops, fn.at_risk, fn.switches) == (ops, at_risk, switches)
    assert report.exit_code == 1


def test_every_code_has_a_fixture_and_a_source():
    found = {code for findings, *_ in EXPECTED.values() for _, code in findings}
    assert found == set(ane_limits.LIMITS)
    for limit in ane_limits.LIMITS.values():
        assert limit.sources and all(s.url.startswith("https://") and s.title and s.kind for s in limit.sources)
    for what, why, sources in ane_limits.UNSUPPORTED_OPS.values():
        assert sources and all(s.url.startswith("https://") for s in sources)


def test_a_clean_fp16_model_gets_no_finding(capsys):
    report = lint(fixture_path("decoder_fp16_ios17"))
    (fn,) = report.functions
    assert fn.findings == [] and fn.ops == 40 and fn.switches == 0 and report.exit_code == 0
    code, out, err = run_cli(capsys, "lint", fixture_path("decoder_fp16_ios17"))
    assert code == 0 and err == ""
    assert out.splitlines()[:2] == [
        f"mlopt lint {fixture_path('decoder_fp16_ios17')}", "  function main (CoreML7): no finding in 40 ops",
    ]


def test_a_head_at_the_limit_is_not_flagged():
    """16384 is within the limit (ncdrone/rustane issue 13 measured 16384 passing); 16385 is not."""
    ops = {f.op for f in lint(lint_fixture("wide_linear_fp16_ios17")).findings}
    assert "logits" in ops and "logits_16384" not in ops


def test_nested_block_ops_are_checked_but_clean_ones_get_nothing():
    """The while loop's body (reduce_max, less, mul in fp16) is walked; only the loop op itself is flagged."""
    report = lint(lint_fixture("unsupported_ops_fp16_ios17"))
    assert {"reduce_max_0", "less_0", "mul_0"}.isdisjoint(f.op for f in report.findings)
    assert report.functions[0].ops == 14  # 11 in the main block, 3 in the loop's body and condition


def test_casts_at_the_fp32_boundary_are_not_fp32_arithmetic():
    report = lint(lint_fixture("fp32_island_ios17"))
    assert [f.op_type for f in report.findings] == ["exp"]  # not the casts to_fp32 / to_fp16
    assert report.findings[0].detail == "output 'exp_fp32' is fp32"


def test_text_report_words_findings_as_risks(capsys):
    code, out, err = run_cli(capsys, "lint", lint_fixture("wide_linear_fp16_ios17"))
    assert code == 1 and err == ""
    lines = out.splitlines()
    assert lines[1] == (
        "  function main (CoreML7): 2 of 5 ops at risk (dim-over-16384 2); "
        "2 estimated switches between the Neural Engine and other units"
    )
    assert lines[2] == (
        "    dim-over-16384  logits (linear): output 'logits' is (1, 1, 16385): 16385 along axis 2: "
        "may run off the Neural Engine"
    )
    assert "    dim-over-16384: every tensor dimension at most 16384; community reports" in out
    assert "Apple documents no Neural Engine limits (coremltools issue 1780)" in out
    for verdict in ("will run", "runs on the CPU", "does not run", "not supported"):
        assert verdict not in out


def test_verbose_lists_every_source_with_its_title(capsys):
    code, out, _ = run_cli(capsys, "lint", lint_fixture("int_arith_ios17"), "-v")
    assert code == 1
    assert "          limit: no arithmetic on integer tensors wider than 8 bits" in out
    assert f"          source: {ane_limits.TINYGRAD_ANE.url}" in out
    assert f"        {ane_limits.TINYGRAD_ANE.title} (reverse engineering)" in out


def test_quiet_prints_nothing_and_keeps_the_exit_code(capsys):
    assert run_cli(capsys, "lint", lint_fixture("int_arith_ios17"), "-q") == (1, "", "")
    assert run_cli(capsys, "lint", fixture_path("decoder_fp16_ios17"), "-q") == (0, "", "")


@pytest.mark.parametrize("argv, code", [
    (["lint", lint_fixture("wide_linear_fp16_ios17")], 1),
    (["lint", lint_fixture("unsupported_ops_fp16_ios17")], 1),
    (["lint", fixture_path("decoder_fp16_ios17")], 0),
    (["lint", fixture_path("real/multifunction_fp16_ios18"), "--function", "decode"], 1),
    (["lint", "/nonexistent/x.mlpackage"], 2),
    (["optimize", fixture_path("mixed_precision_ios17"), "--dry-run"], 0),
])
def test_json_fits_the_schema(capsys, argv, code):
    got, out, _ = run_cli(capsys, *argv, "--json")
    doc = json.loads(out)
    assert got == code
    assert errors(doc, SCHEMA) == []


def test_json_findings(capsys):
    code, out, _ = run_cli(capsys, "lint", lint_fixture("large_gather_fp16_ios17"), "--json")
    doc = json.loads(out)
    assert code == 1 and doc["command"] == "lint" and doc["schema"] == 1
    assert (doc["findings"], doc["at_risk"], doc["ops"]) == (4, 4, 8)
    (fn,) = doc["functions"]
    assert fn["by_reason"] == {"int-arith": 3, "large-gather": 1} and fn["switches"] == 6
    gather = fn["findings"][3]
    assert gather == {
        "op": "embed_cast_uint16_cast_uint16", "op_type": "gather", "code": "large-gather",
        "detail": "gathers from a table of 16385 rows", "limit": "a gather table at most 16384 rows along the gathered axis",
        "risk": "may run off the Neural Engine", "sources": [s.url for s in ane_limits.LIMITS["large-gather"].sources],
    }
    assert sorted(doc["limits"]) == ["int-arith", "large-gather"]
    assert doc["limits"]["int-arith"]["sources"][0]["kind"] == "reverse engineering"


def test_function_selection(capsys):
    report = lint(fixture_path("real/multifunction_fp16_ios18"), function="decode")
    assert [fn.name for fn in report.functions] == ["decode"]
    assert len(lint(fixture_path("real/multifunction_fp16_ios18")).functions) == 2
    code, out, err = run_cli(capsys, "lint", fixture_path("decoder_fp16_ios17"), "--function", "decode")
    assert (code, out) == (2, "")
    assert err == f"mlopt: error: {fixture_path('decoder_fp16_ios17')}: has no function 'decode' (its functions: main)\n"


def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path):
    code, out, err = run_cli(capsys, "lint", tmp_path / "missing.mlpackage")
    assert (code, out) == (2, "") and err == f"mlopt: error: {tmp_path / 'missing.mlpackage'}: no such file or directory\n"
    package = tmp_path / "in.mlpackage"
    shutil.copytree(lint_fixture("int_arith_ios17"), package)
    (package / MODEL).write_bytes(b"\x0a\xff\xff\xff\xff\x0f garbage")
    code, out, err = run_cli(capsys, "lint", package)
    assert (code, out) == (2, "")
    assert err.startswith(f"mlopt: error: {os.path.realpath(package / MODEL)}: not a valid Core ML model protobuf (")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_bad_input_as_json(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "lint", tmp_path / "missing.mlpackage", "--json")
    assert code == 2 and json.loads(out) == {"schema": 1, "command": "lint", "error": {
        "kind": "bad input", "path": str(tmp_path / "missing.mlpackage"), "problem": "no such file or directory", "exit_code": 2,
    }}


def test_the_input_is_only_read(capsys):
    path = lint_fixture("wide_linear_fp16_ios17")
    before = tree_digest(path)
    run_cli(capsys, "lint", path)
    assert tree_digest(path) == before


def test_python_api_takes_a_path_or_an_mlmodel():
    import coremltools as ct

    import mlopt

    path = lint_fixture("unsupported_ops_fp16_ios17")
    from_path = mlopt.lint(path)
    from_model = mlopt.lint(ct.models.MLModel(path, skip_model_load=True))
    assert [(f.op, f.code) for f in from_model.findings] == [(f.op, f.code) for f in from_path.findings]
    assert from_path.to_dict()["functions"] == from_model.to_dict()["functions"]


def test_lint_never_imports_coremltools():
    probe = (
        "import sys; from mlopt.cli import main; rc = main(sys.argv[1:]); "
        "heavy = sorted(m for m in ('coremltools', 'torch') if m in sys.modules); "
        "print('HEAVY', heavy, file=sys.stderr); sys.exit(rc)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, "lint", lint_fixture("wide_linear_fp16_ios17")], capture_output=True, text=True,
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "HEAVY []"


# -- optimize: the findings its rules fixed and those that remain ---------------------------------------------------
def test_optimize_lists_the_fp32_findings_a_rewrite_fixed(capsys):
    """The mixed-precision RMSNorm runs its statistic in fp32 between casts; the fp16 LayerNorm trick replaces it."""
    code, out, _ = run_cli(capsys, "optimize", fixture_path("mixed_precision_ios17"), "--dry-run")
    assert code == 0
    assert "    lint: 4 findings fixed (fp32 4), 0 remain (mlopt lint lists them)" in out.splitlines()
    code, out, _ = run_cli(capsys, "optimize", fixture_path("mixed_precision_ios17"), "--dry-run", "--json")
    changes = json.loads(out)["functions"][0]["lint"]
    assert [f["code"] for f in changes["fixed"]] == ["fp32"] * 4 and changes["remaining"] == changes["introduced"] == []


def test_optimize_compares_lint_before_and_after_on_the_written_model(capsys, tmp_path):
    """What optimize reports as remaining is what `mlopt lint` finds on the output, and what it fixed is gone."""
    source, out_path = fixture_path("layernorm/bert_mixed_ios17"), tmp_path / "out.mlpackage"
    code, out, _ = run_cli(capsys, "optimize", source, out_path, "--json")
    assert code == 0
    changes = json.loads(out)["functions"][0]["lint"]
    before = {(f.op, f.code) for f in lint(source).findings}
    after = {(f.op, f.code) for f in lint(out_path).findings}
    assert {(f["op"], f["code"]) for f in changes["fixed"]} == before - after
    assert {(f["op"], f["code"]) for f in changes["remaining"]} == before & after
    assert {(f["op"], f["code"]) for f in changes["introduced"]} == after - before
    assert len(changes["fixed"]) == 7 and len(after) < len(before)


def test_optimize_says_nothing_about_lint_on_a_clean_model(capsys):
    code, out, _ = run_cli(capsys, "optimize", fixture_path("decoder_fp16_ios17"), "--dry-run")
    assert code == 0 and "lint:" not in out


# -- the rules on hand-built programs (tests/test_validate.py's Program builder) ------------------------------------
def lint_program(program):
    from mlopt.analyses.lint import lint_function
    from mlopt.graph import SpecGraph
    from mlopt.graph.validate import validate_program

    validate_program(program.spec, "test")
    return lint_function(SpecGraph("main", program.function))


def test_gather_rows_are_read_along_the_gathered_axes():
    import numpy as np

    from test_validate import Program, ttype

    p = Program({"i": ttype([2, 1], "INT32"), "j": ttype([2, 3], "INT32")})
    p.const("wide_rows", np.zeros((16385, 2), np.float32))  # 16385 rows
    p.const("wide_cols", np.zeros((3, 16385), np.float32))  # 3 rows, 16385 columns
    p.const("minus_one", np.int32(-1), "INT32")
    p.const("zero", np.int32(0), "INT32")
    p.op("gather_nd", "nd", ttype([2, 2]), x="wide_rows", indices="i")  # indexes axis 0: 16385 rows
    p.op("gather_along_axis", "along_last", ttype([2, 16385]), x="wide_cols", indices="j", axis="minus_one")
    p.op("gather", "along_first", ttype([2, 1, 16385]), x="wide_cols", indices="i", axis="zero")  # 3 rows
    report = lint_program(p.output("nd", "along_last", "along_first"))
    codes = {(f.op, f.code) for f in report.findings if f.code in ("large-gather", "unsupported-op")}
    assert codes == {("nd", "large-gather"), ("along_last", "large-gather"), ("along_first", "unsupported-op")}
    assert ("along_last", "dim-over-16384") in {(f.op, f.code) for f in report.findings}  # its output is wide too


def test_constants_and_constexpr_ops_are_neither_ops_nor_findings():
    import numpy as np

    from test_validate import Program, ttype

    p = Program({"x": ttype([1, 4], "FLOAT16")})
    w = p.op("constexpr_lut_to_dense", "w", ttype([1, 4]))  # fp32 output: not an op that runs
    for param, array, dtype in (("lut", np.zeros(16, np.float32), "FLOAT32"), ("indices", np.zeros(2, np.uint8), "UINT8"),
                                ("shape", np.array([1, 4], np.uint32), "UINT32")):  # iOS16 form: all attributes
        value = w.attributes[param]
        value.type.CopyFrom(ttype(array.shape, dtype))
        value.immediateValue.tensor.bytes.values = array.tobytes()
    p.op("cast", "x32", ttype([1, 4]), x="x", dtype=literal_string("fp32"))
    p.op("mul", "y", ttype([1, 4]), x="x32", y="w")  # reads fp32: the finding is here
    report = lint_program(p.output("y"))
    assert report.ops == 2 and [(f.op, f.code) for f in report.findings] == [("y", "fp32")]
    assert report.switches == 1  # cast -> mul; the constexpr is no producer


def literal_string(text):
    from mlopt.package.proto import MIL_pb2

    value = MIL_pb2.Value()
    value.type.tensorType.dataType = MIL_pb2.DataType.Value("STRING")
    value.immediateValue.tensor.strings.values.append(text)
    return value


def test_switches_count_each_producer_consumer_pair_once():
    from test_validate import Program, ttype

    p = Program({"x": ttype([1, 4], "FLOAT16")})
    half = ttype([1, 4], "FLOAT16")
    p.op("relu", "a", half, x="x")  # clean
    p.op("cast", "a32", ttype([1, 4]), x="a", dtype=literal_string("fp32"))  # a cast is exempt: clean
    p.op("exp", "b", ttype([1, 4]), x="a32")  # fp32: at risk
    p.op("mul", "c", half, x="a", y="a")  # clean, reads a twice: no switch (both clean)
    p.op("add", "d", ttype([1, 4]), x="b", y="b")  # fp32: at risk, reads b twice: no switch
    p.op("cast", "d16", half, x="d", dtype=literal_string("fp16"))  # back to fp16: clean
    p.op("sub", "e", half, x="c", y="d16")  # clean
    report = lint_program(p.output("e"))
    assert [(f.op, f.code) for f in report.findings] == [("b", "fp32"), ("d", "fp32")]
    # pairs a->a32, a32->b (switch), a->c, b->d, d->d16 (switch), c->e, d16->e
    assert report.switches == 2


def test_integer_width_decides_int_arith():
    from test_validate import Program, ttype

    p = Program({"a": ttype([4], "INT32")})
    p.op("add", "a2", ttype([4], "INT32"), x="a", y="a")  # int32 arithmetic (MIL's add takes no narrower integer)
    p.op("shape", "s", ttype([1], "INT32"), x="a2")  # an integer result, but no arithmetic
    report = lint_program(p.output("a2", "s"))
    assert [(f.op, f.code) for f in report.findings] == [("a2", "int-arith")]
    assert report.findings[0].detail == "computes on int32 (output 'a2')"


def test_unknown_sizes_and_non_tensor_values_do_not_break_the_walk():
    """A list output is no tensor: only the tensor the op reads is checked."""
    import numpy as np

    from test_validate import MIL_pb2, Program, literal, ttype

    p = Program({"x": ttype([1, None], "FLOAT16")})
    p.op("relu", "r", ttype([1, None], "FLOAT16"), x="x")
    p.const("zero", np.int32(0), "INT32")
    listed = MIL_pb2.ValueType(listType=MIL_pb2.ListType(type=ttype([1, None], "FLOAT16")))
    listed.listType.length.unknown.variadic = False
    p.op("make_list", "empty", listed, init_length=literal(np.int32(1), "INT32"), dynamic_length=literal(np.bool_(True), "BOOL"),
         elem_shape=[literal(np.int32(1), "INT32"), literal(np.str_("is0"), "STRING")], dtype=literal(np.str_("fp16"), "STRING"))
    p.op("list_write", "l", listed, ls="empty", index="zero", value="r")
    report = lint_program(p.output("r"))
    assert [(f.op, f.code) for f in report.findings] == [("r", "dynamic-shape"), ("l", "dynamic-shape")]
    assert report.findings[0].detail == "output 'r' is (1, ?): a size known only at run time"
    assert report.findings[1].detail == "input 'r' is (1, ?): a size known only at run time"


def test_the_output_quoted_in_the_docs_is_what_lint_prints(capsys, monkeypatch):
    """docs/lint.md quotes a real run on a fixture; it must stay true."""
    with open(os.path.join(os.path.dirname(FIXTURES), "docs", "lint.md")) as f:
        quoted = f.read().split("```\n")[1]
    monkeypatch.chdir(os.path.dirname(FIXTURES))
    code, out, _ = run_cli(capsys, "lint", "fixtures/lint/wide_linear_fp16_ios17.mlpackage")
    assert code == 1 and out == quoted


# -- malformed programs (tests/fuzz/programs.py): handled or refused as bad input, never a crash -----------------------
@pytest.mark.parametrize("fixture", ["lint/unsupported_ops_fp16_ios17", "real/decoder_llama_mixed_ios18"])
def test_malformed_programs_are_linted_or_refused(capsys, tmp_path, fixture):
    from fuzz.programs import PROGRAM_MUTATIONS, NotApplicable, mutate_program

    tried = 0
    for how in sorted(PROGRAM_MUTATIONS):
        package = tmp_path / how / "in.mlpackage"
        shutil.copytree(fixture_path(fixture), package)
        try:
            mutate_program(str(package), how, seed=0)
        except NotApplicable:
            continue
        tried += 1
        before = tree_digest(package)
        code, out, err = run_cli(capsys, "lint", package)
        assert code in (0, 1, 2), (how, code, err)
        assert "Traceback" not in err and "internal error" not in err, (how, err)
        if code == 2:
            assert err.startswith("mlopt: error: ") and err.count("\n") == 1 and out == "", (how, err)
        else:  # linted: a report on stdout, nothing on stderr
            assert err == "" and out.startswith(f"mlopt lint {package}"), (how, err)
        assert tree_digest(package) == before
    assert tried >= 30


def test_an_op_without_outputs_is_named_by_its_name_attribute():
    from test_validate import Program, ttype

    from test_validate import MIL_pb2

    state = MIL_pb2.ValueType(stateType=MIL_pb2.StateType(wrappedType=ttype([1, 4])))
    p = Program({"x": ttype([1, 4]), "s": state}, opset="CoreML8")
    p.op("exp", "e", ttype([1, 4]), x="x")  # fp32
    store = p.op("write_state", None, input="s", data="e")
    store.attributes["name"].CopyFrom(literal_string("store"))
    report = lint_program(p.output("e"))
    assert [(f.op, f.code) for f in report.findings] == [("e", "fp32"), ("store", "fp32")]
    assert report.findings[1].detail == "input 'e' is fp32"


@pytest.mark.parametrize("damage", ["truncated", "empty", "bad sentinel"])
def test_a_damaged_weight_file_is_bad_input_as_for_every_command(capsys, tmp_path, damage):
    """lint reads no weight, but it answers a damaged weight file as inspect does: exit 2, the same line."""
    package = tmp_path / "in.mlpackage"
    shutil.copytree(fixture_path("hf_fp16_ios17"), package)
    weights = package / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    data = weights.read_bytes()
    weights.write_bytes({"truncated": data[:-40], "empty": b"", "bad sentinel": data[:64] + b"\0\0\0\0" + data[68:]}[damage])
    code, out, err = run_cli(capsys, "lint", package)
    assert (code, out) == (2, "") and err.startswith(f"mlopt: error: {weights}: ") and err.count("\n") == 1
    assert run_cli(capsys, "inspect", package)[2] == err
