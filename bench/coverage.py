"""Coverage of real RMSNorm implementations: for every package in fixtures/real/, rewritten or not, and the error.

    python bench/coverage.py            # a markdown table per implementation x precision, both opsets merged

Each cell: chains rewritten / RMSNorms in the model code (expected.json) over iOS15 and iOS17 (or the opsets the
package was built for), the worst self-check error of a rewrite against float64 RMSNorm, and whether `verify`
(original vs optimized model, interpreter, random inputs) passed.
"""

import json
import os
import sys
import tempfile
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
REAL = os.path.join(HERE, "..", "fixtures", "real")


def main():
    from mlopt import optimize_package
    from mlopt.verify import verify_packages

    with open(os.path.join(REAL, "expected.json")) as f:
        expected = json.load(f)
    cells = defaultdict(lambda: dict(rewritten=0, norms=0, error=0.0, verified=True, targets=[]))
    with tempfile.TemporaryDirectory() as tmp:
        for name, info in sorted(expected.items()):
            kind = info["implementation"]
            precision = next((p for p in ("fp16", "fp32", "mixed") if f"_{p}_" in name), "fp16")
            src, out = os.path.join(REAL, f"{name}.mlpackage"), os.path.join(tmp, f"{name}.mlpackage")
            report = optimize_package(src, out)
            cell = cells[(kind, precision)]
            cell["rewritten"] += report.rewrites
            cell["norms"] += info["norms"]
            cell["targets"].append(name.rsplit("_", 1)[-1])
            errors = [c.error for f in report.functions for c in f.chains if c.error is not None and c.status == "rewritten"]
            cell["error"] = max([cell["error"], *errors])
            cell["verified"] &= verify_packages(src, out).passed
            cell["negative"] = info["negative"]
    kinds = sorted({k for k, _ in cells}, key=lambda k: (cells.get((k, "fp16"), {}).get("negative", False), k))
    print("| implementation | fp16 | fp32 | mixed precision |")
    print("|---|---|---|---|")
    for kind in kinds:
        row = [kind]
        for precision in ("fp16", "fp32", "mixed"):
            c = cells.get((kind, precision))
            if c is None:
                row.append("-")
                continue
            targets = "+".join(sorted(set(c["targets"])))
            if c["negative"]:
                row.append(f"left alone ({targets}){'' if c['verified'] else ' VERIFY FAILED'}")
            else:
                check = "verified" if c["verified"] else "VERIFY FAILED"
                row.append(f"{c['rewritten']}/{c['norms']} rewritten ({targets}), error {c['error']:.1e}, {check}")
        print("| " + " | ".join(row) + " |")
    total = sum(c["rewritten"] for c in cells.values())
    wanted = sum(c["norms"] for c in cells.values())
    print(f"\n{total}/{wanted} RMSNorms rewritten in {len(expected)} packages; near-misses untouched: "
          f"{all(c['rewritten'] == 0 for c in cells.values() if c['negative'])}")


if __name__ == "__main__":
    sys.exit(main())
