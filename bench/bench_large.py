"""mlopt on large packages: wall time against `cp -r` and against the coremltools round trip, and peak memory.

    python bench/bench_large.py                 # ~2.1 GB: 16 layers, hidden 2048, MLP 8192, 33 RMSNorms
    python bench/bench_large.py --size 0.4gb    # ~0.4 GB: 16 layers, hidden 896, MLP 3584
    python bench/bench_large.py --size small    # a few MB, for a quick smoke run
    python bench/bench_large.py --head 0        # without the LM head (the head is 32000 rows by default)

Generates a Llama-shaped fp16 package, ending in an LM head of --head output rows (Llama 2's vocabulary, 32000, by
default: a linear the split_wide rule splits into chunks of at most 16384), with the coremltools MIL builder (random weights; kept in --work-dir and
reused if present), then times, side by side on the warm page cache, each until its output is on disk (`sync`
after the process ends, inside the timed span; mlopt fsyncs its files itself before renaming them into place):
  - `cp -r` of the package;
  - `mlopt optimize` (a fresh process, as a user runs it), and the same with `--no-verify` (no proofs: the cost
    of the rewrite and the writing alone), and with OPENBLAS_NUM_THREADS set to the number of cores (OpenBLAS's
    default, which the `mlopt` command replaces by one thread where the user set none); with --compare-with,
    also `mlopt optimize` from another source tree (e.g. `git archive <commit> mlopt | tar -x -C DIR`);
  - the coremltools-only way to edit a saved package: spec -> pymil program (milproto load) -> ct.convert -> save.
Prints medians over --runs (and each run, in order: a busy machine shows in them) and the ratios, plus each
process's own peak RSS (VmHWM from /proc, Linux), and the start-up cost of `mlopt optimize` on a small fixture.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SIZES = {
    "small": dict(layers=2, hidden=256, mlp=1024),
    "0.4gb": dict(layers=16, hidden=896, mlp=3584),
    "2gb": dict(layers=16, hidden=2048, mlp=8192),
}
SEQ = 8
BLAS_ALL = "mlopt optimize, BLAS threads on every core"  # what mlopt's command avoids (mlopt/cli/blas_threads.py)

# Runs a module (`-m`) or a script in this process, then prints the process's own peak RSS: VmHWM belongs to
# this process image only (a wait4 rusage would also count the benchmark process it was forked from).
PEAK = """import os, runpy, sys
kind, target, sys.argv = sys.argv[1], sys.argv[2], sys.argv[2:]
code = 0
try:
    runpy.run_module(target, run_name="__main__", alter_sys=True) if kind == "-m" else runpy.run_path(target, run_name="__main__")
except SystemExit as e:
    code = e.code or 0
status = "/proc/self/status"
hwm = [l.split()[1] for l in open(status) if l.startswith("VmHWM")] if os.path.exists(status) else []
if hwm:
    print("PEAK_KB", hwm[0], file=sys.stderr)
sys.exit(code)
"""
ROUND_TRIP = """
import sys, coremltools as ct
from coremltools.converters.mil.frontend.milproto.load import load
src, dst = sys.argv[1], sys.argv[2]
model = ct.models.MLModel(src, skip_model_load=True)
spec = model.get_spec()
program = load(spec, spec.specificationVersion, model.weights_dir)
out = ct.convert(program, convert_to="mlprogram", pass_pipeline=ct.PassPipeline.EMPTY,
                 minimum_deployment_target=ct.target.iOS17, skip_model_load=True)
out.save(dst)
"""


def build(path, layers, hidden, mlp, head=0):
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    rng = np.random.default_rng(0)

    def w(*shape):
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)

    def rms_norm(x):
        ms = mb.reduce_mean(x=mb.pow(x=x, y=np.float16(2)), axes=[-1], keep_dims=True)
        n = mb.mul(x=x, y=mb.rsqrt(x=mb.add(x=ms, y=np.float16(1e-5))))
        return mb.mul(x=n, y=(1 + 0.1 * rng.standard_normal(hidden)).astype(np.float16))

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, SEQ, hidden), dtype=types.fp16)], opset_version=ct.target.iOS17)
    def prog(x):
        h = x
        for _ in range(layers):
            a = rms_norm(h)
            q, k, v = (mb.linear(x=a, weight=w(hidden, hidden)) for _ in range(3))
            scores = mb.mul(x=mb.matmul(x=q, y=k, transpose_y=True), y=np.float16(hidden**-0.5))
            att = mb.matmul(x=mb.softmax(x=scores, axis=-1), y=v)
            h = mb.add(x=h, y=mb.linear(x=att, weight=w(hidden, hidden)))
            m = rms_norm(h)
            gate, up = mb.linear(x=m, weight=w(mlp, hidden)), mb.linear(x=m, weight=w(mlp, hidden))
            h = mb.add(x=h, y=mb.linear(x=mb.mul(x=mb.silu(x=gate), y=up), weight=w(hidden, mlp)))
        h = rms_norm(h)
        return mb.linear(x=h, weight=w(head, hidden)) if head else h

    model = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
                       compute_precision=ct.precision.FLOAT16, pass_pipeline=ct.PassPipeline.EMPTY, skip_model_load=True)
    model.save(path)


def ensure_package(work_dir, size, head=0):
    """The generated package of `size` and `head` rows in `work_dir`, built on first use and reused after."""
    os.makedirs(work_dir, exist_ok=True)
    src = os.path.join(work_dir, f"llama_{size}_head{head}.mlpackage")
    if not os.path.isdir(src):
        start = time.perf_counter()
        build(src, head=head, **SIZES[size])
        print(f"built {src} in {time.perf_counter() - start:.0f} s")
    return src


def package_size(path):
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def timed(argv, dst, peak=False, env=None, cwd=None):
    """Wall seconds and peak RSS (MB, or None) of one run writing `dst` (removed before and after). With `peak`,
    argv is ["-m", module, args...] or ["-s", script, args...], run through the PEAK wrapper. Dirty pages are
    flushed first (`sync`), so every run starts from the same state of the page cache, and again before the clock
    stops, so every run is timed until its output is on disk."""
    shutil.rmtree(dst, ignore_errors=True)
    os.sync()
    if peak:
        argv = [sys.executable, "-c", PEAK, *argv]
    start = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd)
    os.sync()  # timed until the output is on disk, for every step alike
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} failed:\n{result.stderr[-2000:]}")
    kb = [line.split()[1] for line in result.stderr.splitlines() if line.startswith("PEAK_KB")]
    shutil.rmtree(dst, ignore_errors=True)
    return seconds, (int(kb[-1]) / 1024 if kb else None)


def rewrites(src, dst):
    """What one `mlopt optimize --json` run rewrites in `src`, by rule: "rms_norm 33, split_wide 1"."""
    import json

    shutil.rmtree(dst, ignore_errors=True)
    result = subprocess.run([sys.executable, "-m", "mlopt", "optimize", "--json", src, dst], capture_output=True, text=True)
    shutil.rmtree(dst, ignore_errors=True)
    if result.returncode not in (0, 1):
        raise RuntimeError(f"mlopt optimize failed:\n{result.stderr[-2000:]}")
    counts = {}
    for fn in json.loads(result.stdout).get("functions", []):
        for chain in fn.get("chains", []):
            if chain.get("status") == "rewritten":
                counts[chain["rule"]] = counts.get(chain["rule"], 0) + 1
    return ", ".join(f"{rule} {n}" for rule, n in sorted(counts.items())) or "nothing"


def other_source(folder):
    """(env, cwd) that make `python -m mlopt` import the mlopt of source tree `folder` (first on sys.path: as
    the working folder, since `python -c` puts that before PYTHONPATH), and the module file it imports."""
    folder = os.path.abspath(folder)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (folder, os.environ.get("PYTHONPATH")) if p)}
    found = subprocess.run([sys.executable, "-c", "import mlopt; print(mlopt.__file__)"], capture_output=True, text=True,
                           env=env, cwd=folder).stdout.strip()
    return env, folder, found


def bench(src, work, runs, round_trip_runs, compare_with=None):
    dst = os.path.join(work, "out.mlpackage")
    timed(["cp", "-r", src, dst], dst)  # warm the page cache
    every_core = {**os.environ, "OPENBLAS_NUM_THREADS": str(os.cpu_count() or 1)}  # OpenBLAS's own default
    results = {"cp -r": [], "mlopt optimize": [], "mlopt optimize --no-verify": [], BLAS_ALL: []}
    if compare_with is not None:
        other_env, other_cwd, _ = other_source(compare_with)
        results[f"mlopt optimize of {compare_with}"] = []
    for _ in range(runs):  # interleaved, so all see the same machine state
        results["cp -r"].append(timed(["cp", "-r", src, dst], dst))
        results["mlopt optimize"].append(timed(["-m", "mlopt", "optimize", src, dst], dst, peak=True))
        results["mlopt optimize --no-verify"].append(timed(["-m", "mlopt", "optimize", "--no-verify", src, dst], dst, peak=True))
        results[BLAS_ALL].append(timed(["-m", "mlopt", "optimize", src, dst], dst, peak=True, env=every_core))
        if compare_with is not None:
            results[f"mlopt optimize of {compare_with}"].append(
                timed(["-m", "mlopt", "optimize", src, dst], dst, peak=True, env=other_env, cwd=other_cwd))
    script = os.path.join(work, "round_trip.py")
    with open(script, "w") as f:
        f.write(ROUND_TRIP)
    if round_trip_runs:
        results["coremltools round trip"] = [timed(["-s", script, src, dst], dst, peak=True) for _ in range(round_trip_runs)]
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="2gb")
    parser.add_argument("--runs", type=int, default=7, help="interleaved runs of cp and mlopt (median reported)")
    parser.add_argument("--round-trip-runs", type=int, default=2, help="runs of the coremltools round trip")
    parser.add_argument("--head", type=int, default=32000, help="output rows of the LM head (0: no head)")
    parser.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "mlopt-bench"))
    parser.add_argument("--compare-with", metavar="SOURCE_TREE",
                        help="also time `mlopt optimize` from another source tree (a checkout of an earlier commit), interleaved")
    args = parser.parse_args()
    args.work_dir = os.path.abspath(args.work_dir)

    src = ensure_package(args.work_dir, args.size, args.head)
    shape = SIZES[args.size]
    print(f"package: {package_size(src) / 1e6:,.0f} MB, {shape['layers']} layers, hidden {shape['hidden']}, "
          f"MLP {shape['mlp']}, {2 * shape['layers'] + 1} RMSNorms, LM head {args.head or 'none'}; median of "
          f"{args.runs} runs ({args.round_trip_runs} for the round trip)")
    print(f"mlopt optimize rewrites: {rewrites(src, os.path.join(args.work_dir, 'rewrites.mlpackage'))}")

    if args.compare_with is not None:
        print(f"compared with: {other_source(args.compare_with)[2]}")
    results = bench(src, args.work_dir, args.runs, args.round_trip_runs, args.compare_with)
    medians = {k: statistics.median(s for s, _ in v) for k, v in results.items()}
    peaks = {k: max((p for _, p in v if p is not None), default=None) for k, v in results.items()}
    print("| step | median wall s | each run, s | peak RSS MB | vs cp -r |")
    print("|---|---|---|---|---|")
    for name, seconds in medians.items():
        peak = "-" if peaks[name] is None else f"{peaks[name]:.0f}"
        each = " ".join(f"{s:.2f}" for s, _ in results[name])
        print(f"| {name} | {seconds:.2f} | {each} | {peak} | {seconds / medians['cp -r']:.2f}x |")
    line = f"\nmlopt optimize: {medians['mlopt optimize'] / medians['cp -r']:.2f}x cp -r"
    if "coremltools round trip" in medians:
        line += f"; coremltools round trip / mlopt: {medians['coremltools round trip'] / medians['mlopt optimize']:.1f}x"
    print(line)

    fixture = os.path.join(ROOT, "fixtures", "hf_fp16_ios17.mlpackage")
    out = os.path.join(args.work_dir, "small.mlpackage")
    small = [timed(["-m", "mlopt", "optimize", fixture, out], out, peak=True) for _ in range(5)]
    print(f"start-up, mlopt optimize on fixtures/hf_fp16_ios17: median {statistics.median(s for s, _ in small):.2f} s, "
          f"peak RSS {max(p or 0 for _, p in small):.0f} MB")


if __name__ == "__main__":
    main()
