"""`mlopt verify` on a large package: wall time and peak memory against the package's size.

    python bench/bench_verify.py                 # the ~2.1 GB Llama-shaped package of bench_large.py
    python bench/bench_verify.py --size small    # a few MB, for a quick smoke run

Builds (or reuses, in --work-dir) the package bench_large.py builds, rewrites it with `mlopt optimize`, then times
`mlopt verify IN OUT` in fresh processes (weights read from the page cache) and reports each run's own peak RSS
(VmHWM from /proc, Linux). verify reads a weight when an op first needs it and drops it after its last use, so
its memory follows the working set: the goal is a peak under 25% of the package.
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="2gb")
    parser.add_argument("--runs", type=int, default=3, help="runs of verify (median reported)")
    parser.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "mlopt-bench"))
    args = parser.parse_args()

    src = ensure_package(args.work_dir, args.size)
    out = os.path.join(args.work_dir, f"llama_{args.size}_optimized.mlpackage")
    subprocess.run([sys.executable, "-m", "mlopt", "optimize", src, out, "--force", "-q"], check=True)
    runs = []
    for _ in range(args.runs):
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-c", PEAK, "-m", "mlopt", "verify", src, out, "-q"], capture_output=True, text=True)
        seconds = time.perf_counter() - start
        peak = [int(line.split()[1]) / 1024 for line in result.stderr.splitlines() if line.startswith("PEAK_KB")]
        runs.append((seconds, peak[-1] if peak else float("nan"), result.returncode))
    size = package_size(src) / 2**20
    seconds = statistics.median(s for s, _, _ in runs)
    peak = max(p for _, p, _ in runs)
    print(f"package: {size:,.0f} MB ({args.size}); verify IN OUT, median of {args.runs} runs")
    print("| step | median wall s | peak RSS MB | peak / package |")
    print("|---|---|---|---|")
    print(f"| mlopt verify | {seconds:.2f} | {peak:.0f} | {peak / size:.0%} |")
    print(f"exit codes: {sorted({code for _, _, code in runs})} (0: outputs agree, 1: differ, see `mlopt verify` for why)")


if __name__ == "__main__":
    main()
