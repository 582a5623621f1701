"""`mlopt audit` on a large package: wall time and peak memory, against `mlopt verify` on the same model.

    python bench/bench_audit.py                 # the ~2.1 GB Llama-shaped package of bench_large.py
    python bench/bench_audit.py --size small    # a few MB, for a quick smoke run

Builds (or reuses, in --work-dir) the package bench_large.py builds and its `mlopt optimize` output, then runs, in
fresh processes (weights read from the page cache), `mlopt verify IN OUT` (two fp16 runs compared) and `mlopt
audit IN` (the device run, the float64 run and the unflushed run, side by side in one walk), and reports each
one's median wall time and its own peak RSS (VmHWM from /proc, Linux). Goals (issue 21): audit's peak RSS below
1 GB on the 2.1 GB package, its time within 3x of verify's.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_large import PEAK, SIZES, ensure_package, package_size  # noqa: E402


def timed_runs(argv, runs):
    """[(wall seconds, peak RSS MB, exit code)] of `runs` fresh `python -m mlopt ...` processes."""
    results = []
    for _ in range(runs):
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-c", PEAK, "-m", "mlopt", *argv], capture_output=True, text=True)
        seconds = time.perf_counter() - start
        peak = [int(line.split()[1]) / 1024 for line in result.stderr.splitlines() if line.startswith("PEAK_KB")]
        if result.returncode not in (0, 1):
            sys.exit(f"mlopt {' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
        results.append((seconds, peak[-1] if peak else float("nan"), result.returncode))
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="2gb")
    parser.add_argument("--runs", type=int, default=3, help="runs of each command (median reported)")
    parser.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "mlopt-bench"))
    args = parser.parse_args()

    src = ensure_package(args.work_dir, args.size)
    out = os.path.join(args.work_dir, f"llama_{args.size}_optimized.mlpackage")
    if not os.path.isdir(out):
        subprocess.run([sys.executable, "-m", "mlopt", "optimize", src, out, "--force", "-q"], check=True)
    verify = timed_runs(["verify", src, out, "-q"], args.runs)
    audit = timed_runs(["audit", src, "-q"], args.runs)
    size = package_size(src) / 2**20
    print(f"package: {size:,.0f} MB ({args.size}); median of {args.runs} runs each")
    print("| command | median wall s | peak RSS MB | peak / package |")
    print("|---|---|---|---|")
    medians = {}
    for label, runs in (("mlopt verify IN OUT", verify), ("mlopt audit IN", audit)):
        medians[label] = statistics.median(s for s, _, _ in runs)
        peak = max(p for _, p, _ in runs)
        print(f"| {label} | {medians[label]:.2f} | {peak:.0f} | {peak / size:.0%} |")
    ratio = medians["mlopt audit IN"] / medians["mlopt verify IN OUT"]
    audit_peak = max(p for _, p, _ in audit)
    print(f"audit / verify time: {ratio:.2f}x (goal: <= 3x); audit peak RSS {audit_peak:.0f} MB (goal: < 1024 MB)")
    print(f"exit codes: verify {sorted({c for _, _, c in verify})}, audit {sorted({c for _, _, c in audit})} (audit: 0 fp16-safe, 1 findings)")


if __name__ == "__main__":
    main()
