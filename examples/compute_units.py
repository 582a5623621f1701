"""Which compute-unit settings rewrite: the same model converted with each, by mlopt.convert and by mlopt optimize.

    pip install .
    python examples/compute_units.py

The RMSNorm rule rewrites only with CPU_AND_NE: the trick pays where the Neural Engine is targeted explicitly; ALL
lets Core ML choose, and CPU/GPU run the original chain well. (The LayerNorm rule, not exercised here, rewrites
with every setting, as coremltools' own LayerNorm fusion does.) No torch needed: the model is written with the
MIL builder.
"""

import os
import tempfile

import numpy as np

import coremltools as ct
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import types

import mlopt

H = 64


@mb.program(input_specs=[mb.TensorSpec(shape=(1, 8, H), dtype=types.fp16)], opset_version=ct.target.iOS17)
def prog(x):
    ms = mb.reduce_mean(x=mb.pow(x=x, y=np.float16(2)), axes=[-1], keep_dims=True)
    n = mb.mul(x=x, y=mb.rsqrt(x=mb.add(x=ms, y=np.float16(1e-6))))
    return mb.mul(x=n, y=np.linspace(0.5, 1.5, H).astype(np.float16))


def ops(model):
    f = model.get_spec().mlProgram.functions["main"]
    return [op.type for op in f.block_specializations[f.opset].operations if op.type != "const"]


def main():
    with tempfile.TemporaryDirectory() as tmp:
        plain = os.path.join(tmp, "plain.mlpackage")
        ct.convert(prog, minimum_deployment_target=ct.target.iOS17, skip_model_load=True).save(plain)
        print(f"{'units':<12}  {'mlopt.convert':<55}  mlopt optimize")
        for units in ct.ComputeUnit:
            model = mlopt.convert(prog, minimum_deployment_target=ct.target.iOS17, compute_units=units, skip_model_load=True)
            report = mlopt.optimize_package(plain, os.path.join(tmp, f"{units.name}.mlpackage"), compute_units=units)
            print(f"{units.name:<12}  {' -> '.join(ops(model)):<55}  {report.rewrites} chain(s) rewritten")


if __name__ == "__main__":
    main()
