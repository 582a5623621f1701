"""End to end: a PyTorch module with RMSNorm -> Core ML with the LayerNorm trick, in one call, checked numerically.

    pip install . torch==2.13.0
    python examples/torch_to_coreml.py [OUT.mlpackage]

`mlopt.convert` takes exactly ct.convert's arguments. With compute_units=CPU_AND_NE the RMSNorm chains are fused
and lowered to layer_norm(concat([x, -x])) inside coremltools' own pass pipeline; the model is then compared with
a plain conversion in mlopt's interpreter (no Mac needed).
"""

import os
import sys
import tempfile

import numpy as np
import torch
from torch import nn

import coremltools as ct
import mlopt
from mlopt.analyses.verify import verify_packages


class LlamaRMSNorm(nn.Module):  # as in transformers' modeling_llama.py
    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states):
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


class Block(nn.Module):
    def __init__(self, hidden=256):
        super().__init__()
        self.norm1, self.norm2 = LlamaRMSNorm(hidden), LlamaRMSNorm(hidden)
        self.up, self.down = nn.Linear(hidden, 4 * hidden), nn.Linear(4 * hidden, hidden)

    def forward(self, x):
        return self.norm2(x + self.down(nn.functional.silu(self.up(self.norm1(x)))))


def main(out):
    torch.manual_seed(0)
    example = torch.randn(1, 16, 256)
    traced = torch.jit.trace(Block().eval(), example)
    common = dict(inputs=[ct.TensorType(name="x", shape=example.shape)], minimum_deployment_target=ct.target.iOS17)

    model = mlopt.convert(traced, compute_units=ct.ComputeUnit.CPU_AND_NE, **common)
    ops = [op.type for op in model.get_spec().mlProgram.functions["main"].block_specializations["CoreML7"].operations]
    print(f"layer_norm ops: {ops.count('layer_norm')}, reduce_mean ops: {ops.count('reduce_mean')}")
    model.save(out)

    with tempfile.TemporaryDirectory() as tmp:
        plain = os.path.join(tmp, "plain.mlpackage")
        ct.convert(traced, compute_units=ct.ComputeUnit.CPU_AND_NE, **common).save(plain)
        result = verify_packages(plain, out)
        print(result.render())
        x = example.numpy()
        with torch.no_grad():
            reference = traced(torch.from_numpy(x)).numpy()
        print(f"torch vs Core ML model (interpreter, fp16): max abs {np.abs(_run(out, x) - reference).max():.3g}")
    return 0 if result.passed else 1


def _run(path, x):
    from mlopt.graph import SpecGraph
    from mlopt.numerics.interpreter import run_function
    from mlopt.package.weights import BlobReader
    from mlopt.package import read_package

    package = read_package(path)
    view = SpecGraph("main", package.spec.mlProgram.functions["main"])
    (value,) = run_function(view, BlobReader(os.path.dirname(package.model_path)), {"x": x}).values()
    return value.astype(np.float64)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(tempfile.gettempdir(), "block_ane.mlpackage")))
