"""Shared helpers: fixture paths, the command line in-process, chains of a report, epsilon as stored, op listings,
running packages in mlopt's interpreter; and the check that every package a test writes loads with coremltools'
own program loader. Rule tests live in tests/rules/ (one file per rule or rule family)."""

import hashlib
import os

import numpy as np
import pytest

from mlopt.graph import SpecGraph
from mlopt.numerics.inputs import random_inputs
from mlopt.numerics.interpreter import run_function
from mlopt.package.weights import BlobReader
from mlopt.package import PackageWriter, read_package

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "fixtures")


def fixture_path(name, folder=""):
    """A committed fixture package: fixtures/<folder>/<name>.mlpackage (folders: converters, layernorm, real)."""
    return os.path.join(FIXTURES, folder, f"{name}.mlpackage")


def run(capsys, *argv):
    """`mlopt ARGV` in-process: (exit code, stdout, stderr)."""
    from mlopt.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def chains(report, rule=None):
    """Every chain of a Report (of one rule, if given), function by function."""
    return [c for f in report.functions for c in f.chains if rule is None or c.rule == rule]


def stored_epsilon(eps, precision):
    """eps as a program holds it: fp16 programs round it to fp16, and a value that underflows (BERT's 1e-12)
    becomes the smallest subnormal, 2**-24; fp32 and mixed programs hold it in fp32. (1e-6 and 1e-5 are fp16
    subnormals, stored on the 2**-24 grid.)"""
    if precision == "fp16":
        return max(float(np.float16(eps)), 2.0**-24)
    return float(np.float32(eps))


def assert_epsilon(reported, eps, precision):
    """fp16: within one step of the fp16 grid of the stored value (a second stored constant - the eps * N of a
    folded form, or coremltools' rsqrt epsilon, 2**-24 on iOS15 and 1e-12 later - moves the sum by at most one
    step; a relative bound means nothing here, fp16(1e-6) itself is 1.3% off). Otherwise: the stored value, plus
    at most an rsqrt epsilon of 1e-12."""
    stored = stored_epsilon(eps, precision)
    if precision == "fp16":
        assert reported == pytest.approx(stored, abs=float(np.spacing(np.float16(stored)))), (reported, eps)
    else:
        assert reported == pytest.approx(stored, rel=2e-6), (reported, eps)


def all_fixtures():
    return sorted(f[: -len(".mlpackage")] for f in os.listdir(FIXTURES) if f.endswith(".mlpackage"))


def main_view(path, function="main"):
    package = read_package(path)
    return SpecGraph(function, package.spec.mlProgram.functions[function])


def op_types(path, function="main", consts=False):
    """Op types of the function's main block, in order (const ops left out unless asked)."""
    return [op.type for op in main_view(path, function).main.operations if consts or op.type != "const"]


def run_package(path, feeds, function="main", float_dtype=None):
    package = read_package(path)
    view = SpecGraph(function, package.spec.mlProgram.functions[function])
    blobs = BlobReader(os.path.dirname(package.model_path))
    try:
        return {k: np.array(v) for k, v in run_function(view, blobs, feeds, float_dtype=float_dtype).items()}
    finally:
        blobs.close()


def inputs_for(path, seed=0, scale=1.0, function="main"):
    package = read_package(path)
    return random_inputs(package.spec, package.spec.mlProgram.functions[function], np.random.default_rng(seed), scale)


def tree_digest(path):
    """sha256 over every file's relative path and bytes: equal digests mean byte-identical folders."""
    h = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            h.update(os.path.relpath(full, path).encode())
            with open(full, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def file_digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


PROVENANCE = b"com.github.mlopt.version"  # engine.PROVENANCE_VERSION: in every model file mlopt rewrote


def load_in_coremltools(path):
    """The package's program read by coremltools' own loader (`milproto.load`), which re-runs coremltools' type
    inference on every op: what compression, `ct.optimize` or a re-save would do with it. Raises what it raises."""
    from coremltools.converters.mil.frontend.milproto.load import load

    package = read_package(path)
    spec = package.spec
    if spec.WhichOneof("Type") != "mlProgram":
        return None
    return load(spec, spec.specificationVersion, os.path.join(os.path.dirname(package.model_path), "weights"))


def _rewritten_packages(folder):
    """Packages under `folder` whose root model file mlopt rewrote (it carries mlopt's provenance key): outputs
    of an `mlopt` child process, which the in-process hook below does not see."""
    found = []
    for root, dirs, _ in os.walk(folder):
        for name in [d for d in dirs if d.endswith(".mlpackage")]:
            dirs.remove(name)
            model = os.path.join(root, name, "Data", "com.apple.CoreML", "model.mlmodel")
            try:
                with open(model, "rb") as f:
                    if PROVENANCE in f.read():
                        found.append(os.path.join(root, name))
            except OSError:
                pass
    return found


@pytest.fixture(autouse=True)
def written_packages_load_in_coremltools(request, monkeypatch):
    """Every package the test had mlopt write (in this process, or rewritten by a child process under the
    test's tmp_path) must still load with coremltools' program loader when the test ends."""
    written = []
    commit = PackageWriter.commit

    def recording_commit(self, *args, **kwargs):
        methods = commit(self, *args, **kwargs)
        written.append(self.dest.path)
        return methods

    monkeypatch.setattr(PackageWriter, "commit", recording_commit)
    yield
    tmp_path = getattr(request.node, "funcargs", {}).get("tmp_path")
    if tmp_path is not None:
        written += _rewritten_packages(str(tmp_path))
    for path in dict.fromkeys(os.path.abspath(p) for p in written):
        if not os.path.isdir(path):  # removed or moved by the test itself
            continue
        try:
            load_in_coremltools(path)
        except Exception as e:
            pytest.fail(f"{path}: mlopt wrote a package coremltools' program loader rejects: {type(e).__name__}: {e}")


@pytest.fixture
def optimized(tmp_path):
    """optimized(name, **kwargs) -> (output path, Report), optimizing fixture `name` into tmp_path."""
    from mlopt import optimize_package

    def run(name, **kwargs):
        out = tmp_path / f"{name}.opt.mlpackage"
        report = optimize_package(fixture_path(name), out, **kwargs)
        return str(out), report

    return run


def record_fed(monkeypatch):
    """The shapes of every input the self-check feeds its evaluators, recorded as it runs."""
    from mlopt.numerics import selfcheck

    fed = []
    real = selfcheck.Evaluator.evaluate

    def recording(self, targets, feeds):
        fed.extend(v.shape for v in feeds.values())
        return real(self, targets, feeds)

    monkeypatch.setattr(selfcheck.Evaluator, "evaluate", recording)
    return fed


def cli_peak_rss_mb(*argv):
    """Run `mlopt ARGV` in a child process; return (exit code, its stderr, its own peak RSS in MB). The child reads
    its own VmHWM (per process image, reset at exec; a wait4 rusage would also count the pytest process it was
    forked from)."""
    import subprocess
    import sys

    probe = (
        "import sys; from mlopt.cli import main; rc = main(sys.argv[1:]); "
        "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1], file=sys.stderr); "
        "sys.exit(rc)"
    )
    result = subprocess.run([sys.executable, "-c", probe, *map(str, argv)], capture_output=True, text=True)
    return result.returncode, result.stderr, int(result.stderr.split()[-1]) / 1024


def concat_without_negation(rule, builder, fused):
    """A plausible bug in the RMSNorm rule's lowering (patched in as `RMSNormRule.lower`): concat([x, x]) instead
    of concat([x, -x]). Types and shapes stay valid; layer_norm then subtracts the mean, so the result is a
    LayerNorm, not an RMSNorm."""
    x, axis = fused.x, fused.axes[0]
    normed = builder.layer_norm(builder.concat([x, x], axis), fused.axes, fused.params["epsilon"])
    out = builder.slice_along(normed, axis, 0, builder.dim(x, axis))
    gamma = fused.operands.get("gamma")
    if gamma is not None and builder.dtype(gamma) != fused.dtype:
        gamma = builder.cast(gamma, fused.dtype)
    return out if gamma is None else builder.mul(out, gamma)


def mb_builder_ops(emit):
    """Op types of a pymil block after MbBuilder replaces a relu of a (2, 8) fp32 input with what `emit(builder, x)`
    returns: how the conversion-time builder's methods are tested without a whole rule."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb

    from mlopt.coreml.mb_builder import MbBuilder

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 8))], opset_version=ct.target.iOS17)
    def prog(x):
        return mb.relu(x=x)

    block = prog.functions["main"]
    (relu,) = [op for op in block.operations if op.op_type == "relu"]
    with block:
        builder = MbBuilder(relu, "CoreML7")
        builder.finish(emit(builder, relu.x), relu.outputs[0])
        block.remove_ops([relu])
    return [op.op_type for op in block.operations if op.op_type != "const"]


WEIGHT_FILE = "@model_path/weights/weight.bin"


def blob_consts_program(consts, file_name=WEIGHT_FILE):
    """A spec whose function 'main' holds one const per (offset, dtype, shape) in `consts`, each stored in
    `file_name` at that offset: what the weight-file writer's tests rewrite."""
    from mlopt.package.proto import Model_pb2
    from mlopt.rewrites.spec_builder import tensor_type

    spec = Model_pb2.Model()
    function = spec.mlProgram.functions["main"]
    function.opset = "CoreML7"
    block = function.block_specializations["CoreML7"]
    for k, (offset, dtype, shape) in enumerate(consts):
        op = block.operations.add()
        op.type = "const"
        op.outputs.add().name = f"c{k}"
        value = op.attributes["val"]
        value.type.CopyFrom(tensor_type(dtype, shape))
        value.blobFileValue.fileName = file_name
        value.blobFileValue.offset = offset
    return spec
