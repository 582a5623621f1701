"""What verify's float64 judge sees: each model's error against a float64 run of the reference, for correct and
deliberately wrong rewrites, on a shallow and a deep model. The ratio candidate / reference is what
FLOAT64_FACTOR (mlopt/numerics/diagnose.py) separates: docs/verify.md quotes this script's output.

    python bench/verify_judge.py              # seeds 0-3; the deep model is built in a temporary folder

Models: fixtures/hf_fp16_ios17 (one RMSNorm), fixtures/layernorm/dtln_instant_layernorm_fp16_ios17 (one
LayerNorm), and bench_large.py's 16-layer fp16 decoder at hidden size 64 (33 RMSNorms). Wrong rewrites are the
edits of tests/broken_rewrites.py (wrong eps, wrong axis, dropped gamma, concat([x, x])).
"""

import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [HERE, os.path.join(ROOT, "tests"), ROOT]

from bench_large import build  # noqa: E402
from broken_rewrites import BROKEN, edited  # noqa: E402
from mlopt import optimize_package  # noqa: E402
from mlopt.errors import CannotVerify  # noqa: E402
from mlopt.analyses.verify import verify_packages  # noqa: E402

SEEDS = range(4)


def main():
    with tempfile.TemporaryDirectory() as work:
        deep = os.path.join(work, "deep.mlpackage")
        build(deep, layers=16, hidden=64, mlp=128)
        models = {
            "shallow RMSNorm": os.path.join(ROOT, "fixtures", "hf_fp16_ios17.mlpackage"),
            "shallow LayerNorm": os.path.join(ROOT, "fixtures", "layernorm", "dtln_instant_layernorm_fp16_ios17.mlpackage"),
            "deep (16 layers)": deep,
        }
        print("| model | rewrite | reference error | candidate error | candidate / reference | max abs A-B | verdict |")
        print("|---|---|---|---|---|---|---|")
        for label, reference in models.items():
            optimized = os.path.join(work, f"{len(os.listdir(work))}.mlpackage")
            optimize_package(reference, optimized)
            rows = [("correct", optimized)]
            for name, edit in BROKEN.items():
                try:
                    rows.append((name, edited(optimized, os.path.join(work, f"{len(os.listdir(work))}.mlpackage"), edit)))
                except AssertionError:  # the edit does not apply (no concat in a LayerNorm rewrite)
                    continue
            for name, candidate in rows:
                _row(label, name, reference, candidate)


def _row(label, name, reference, candidate):
    try:
        checks = [verify_packages(reference, candidate, seed=s).checks[0] for s in SEEDS]
    except CannotVerify as e:
        print(f"| {label} | {name} | - | - | - | - | cannot verify (exit 3): {str(e).split(': ', 3)[-1][:60]} |")
        return
    ref = [c.reference_error for c in checks]
    cand = [c.candidate_error for c in checks]
    ratios = [c / r for c, r in zip(cand, ref)]
    verdicts = sorted({c.passed_by or "FAIL" for c in checks})
    print(f"| {label} | {name} | {_span(ref)} | {_span(cand)} | {_span(ratios, '.2f')} | "
          f"{_span([c.max_abs for c in checks])} | {', '.join(verdicts)} |")


def _span(values, fmt=".2g"):
    lo, hi = min(values), max(values)
    return f"{lo:{fmt}}" if f"{lo:{fmt}}" == f"{hi:{fmt}}" else f"{lo:{fmt}} - {hi:{fmt}}"


if __name__ == "__main__":
    main()
