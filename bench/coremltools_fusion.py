"""What coremltools' own fusion pass makes of the fixtures/coreml_norms/ programs, checked like mlopt's rewrites.

    python bench/coremltools_fusion.py [names...]     # every fixture of the set, or the named ones

Each program of fixtures/make_coreml_norm_fixtures.py is converted a second time with coremltools' pass
`common::fuse_layernorm_or_instancenorm` as the only graph pass, and the fused package is compared with the
unfused fixture by `mlopt verify` (mlopt's interpreter, seed 0, random inputs): the largest difference, or the
error that stopped the fused program (or coremltools' pass itself). A row per fixture, then the programs coremltools
fuses into something other than the chain.
"""

import logging
import os
import shutil
import sys
import tempfile
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "fixtures")
sys.path.insert(0, FIXTURES)


def fuse_with_coremltools(make, name, out):
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    spec = make.FIXTURES[name]
    target = getattr(ct.target, spec["target"])
    dtype = types.fp16 if spec["dtype"] == "fp16" else types.fp32
    prog = mb.program(input_specs=[mb.TensorSpec(shape=spec["shape"], dtype=dtype)], opset_version=target)(spec["body"])
    pipeline = ct.PassPipeline(pass_names=["common::fuse_layernorm_or_instancenorm"], pipeline_name="fusion_only")
    precision = ct.precision.FLOAT16 if spec["dtype"] == "fp16" else ct.precision.FLOAT32
    with make.every_float_constant_in_weight_file():
        model = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=target, pass_pipeline=pipeline,
                           compute_precision=precision, skip_model_load=True)
    model.save(out)
    f = model.get_spec().mlProgram.functions["main"]
    return [op.type for op in f.block_specializations[f.opset].operations if op.type not in ("const", "cast")]


def main(names):
    warnings.filterwarnings("ignore")
    logging.getLogger("coremltools").setLevel(logging.CRITICAL)  # its fp16 I/O notes and the pass's own error
    import make_coreml_norm_fixtures as make
    from mlopt.errors import BadInputError, CannotVerify
    from mlopt.analyses.verify import verify_packages

    print("| fixture | mlopt expects | coremltools' ops | coremltools vs the chain (mlopt verify) |")
    print("|---|---|---|---|")
    wrong, failed = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names or sorted(make.EXPECTED):
            e = make.EXPECTED[name]
            out = os.path.join(tmp, f"{name}.mlpackage")
            expect = f"{e['kind']} ({e['expect']})" if e["kind"] != "none" else "no norm (leave)"
            try:
                ops = fuse_with_coremltools(make, name, out)
            except ValueError as error:  # coremltools' pass builds an op its own type rules refuse
                print(f"| {name} | {expect} | - | coremltools' pass fails: {str(error).splitlines()[0]} |")
                failed.append(name)
                continue
            src = os.path.join(FIXTURES, "coreml_norms", f"{name}.mlpackage")
            try:
                checks = verify_packages(src, out).checks
                worst = max(checks, key=lambda c: c.max_abs)
                verdict = f"{'agrees' if all(c.passed for c in checks) else 'DIFFERS'}, max abs {worst.max_abs:.3g}"
                bad = not all(c.passed for c in checks)
            except (BadInputError, CannotVerify) as error:
                verdict, bad = f"cannot run: {str(error).split(': ', 2)[-1]}", True
            fused = any(op in ("layer_norm", "instance_norm") for op in ops)
            wrong += [name] if bad and fused else []
            print(f"| {name} | {expect} | {' -> '.join(ops)} | {verdict} |")
            shutil.rmtree(out, ignore_errors=True)
    print(f"\ncoremltools fuses {len(wrong)} program(s) into something other than the chain: {', '.join(wrong) or '-'}")
    print(f"coremltools' pass fails on {len(failed)} program(s): {', '.join(failed) or '-'}")


if __name__ == "__main__":
    main(sys.argv[1:])
