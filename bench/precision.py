"""Precision of the rewrite: the four textbook RMSNorm chains, original vs rewritten, against float64 RMSNorm.

    python bench/precision.py [--scales 1,300] [--seed 0]

For each chain (mul(x,x) -> reduce_mean -> [add eps] -> sqrt -> real_div -> [mul gamma]), shape and precision,
a model is converted with coremltools, optimized with mlopt, and both are run in mlopt's interpreter (fp16 values
rounded after every elementwise op, reductions accumulated in fp32). Errors are against RMSNorm computed in
float64 from the same (already rounded) inputs and weights: max abs = max |y - ref|, rel = max |y - ref| / max |ref|.
Scale is the standard deviation of the inputs; at 300, x^2 overflows fp16.
"""

import argparse
import os
import sys
import tempfile
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

SHAPES = [(1, 128, 512), (2, 64, 256), (4, 32, 128)]
CHAINS = [("eps+gamma", True, True), ("eps", True, False), ("gamma", False, True), ("bare", False, False)]
EPS = 1e-6


def build(shape, eps, gamma, fp16, path):
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    dtype = np.float16 if fp16 else np.float32
    weight = np.random.default_rng(7).uniform(0.5, 1.5, shape[-1]).astype(dtype)

    @mb.program(input_specs=[mb.TensorSpec(shape=shape, dtype=types.fp16 if fp16 else types.fp32)], opset_version=ct.target.iOS17)
    def prog(x):
        ms = mb.reduce_mean(x=mb.mul(x=x, y=x), axes=[-1], keep_dims=True)
        if eps:
            ms = mb.add(x=ms, y=dtype(EPS))
        n = mb.real_div(x=x, y=mb.sqrt(x=ms))
        return mb.mul(x=n, y=weight) if gamma else n

    precision = ct.precision.FLOAT16 if fp16 else ct.precision.FLOAT32
    model = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17, compute_precision=precision)
    model.save(path)
    return weight


def errors(y, ref):
    finite = np.isfinite(y)
    if not finite.all():
        return float("inf"), float("inf")
    d = np.abs(y.astype(np.float64) - ref)
    return float(d.max()), float(d.max() / np.abs(ref).max())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default="1,300", help="input standard deviations, comma separated")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from conftest import run_package
    from mlopt import optimize_package

    scales = [float(s) for s in args.scales.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fp16 in (False, True):
            for chain, eps, gamma in CHAINS:
                for shape in SHAPES:
                    src, dst = os.path.join(tmp, "m.mlpackage"), os.path.join(tmp, "o.mlpackage")
                    weight = build(shape, eps, gamma, fp16, src)
                    report = optimize_package(src, dst, force=True)
                    assert report.rewrites == 1, report.render()
                    for scale in scales:
                        x = (np.random.default_rng(args.seed).standard_normal(shape) * scale).astype(np.float16 if fp16 else np.float32)
                        x64 = x.astype(np.float64)
                        ref = x64 / np.sqrt(np.mean(x64 * x64, axis=-1, keepdims=True) + (EPS if eps else 0.0))
                        if gamma:
                            ref = ref * weight.astype(np.float64)
                        (orig,) = run_package(src, {"x": x}).values()
                        (new,) = run_package(dst, {"x": x}).values()
                        rows.append((chain, "fp16" if fp16 else "fp32", shape, scale, *errors(orig, ref), *errors(new, ref)))
                    import shutil

                    shutil.rmtree(src)
    header = ("chain", "dtype", "shape", "scale", "original max abs", "original rel", "mlopt max abs", "mlopt rel")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for chain, dtype, shape, scale, oa, orel, na, nrel in rows:
        print(f"| {chain} | {dtype} | {shape} | {scale:g} | {oa:.2e} | {orel:.2e} | {na:.2e} | {nrel:.2e} |")
    worst = {d: max(r[7] for r in rows if r[1] == d) for d in ("fp32", "fp16")}
    print(f"\nworst mlopt relative error: fp32 {worst['fp32']:.2e}, fp16 {worst['fp16']:.2e}")


if __name__ == "__main__":
    main()
