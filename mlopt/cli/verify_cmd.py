"""`mlopt verify A B`: run both packages in mlopt's interpreter and compare every output (no Core ML needed)."""

from .output import add_verbosity


def add_parser(commands):
    p = commands.add_parser(
        "verify",
        help="compare two packages' outputs on the same inputs in mlopt's numpy interpreter",
        description="Run A (the reference) and B on the same inputs, for every function, and compare each output. "
        "Both are also measured against a float64 run of A: an output passes when B is within tolerance of A, or "
        "no further from float64 than 4x A's error (docs/verify.md).",
    )
    p.add_argument("reference", metavar="A", help="the reference .mlpackage (e.g. the original)")
    p.add_argument("candidate", metavar="B", help="the .mlpackage to check (e.g. the optimized one)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default: %(default)s)")
    p.add_argument("--scale", type=float, default=1.0, help="standard deviation of the random inputs (default: 1)")
    p.add_argument("--inputs", metavar="NPZ", help="inputs from an .npz (keys: input names, or function/input)")
    p.add_argument("--rtol", type=float, help="relative tolerance (default: by the models' precision)")
    p.add_argument("--atol", type=float, help="absolute tolerance (default: by the models' precision)")
    p.add_argument(
        "--accumulate",
        choices=("fp32", "fp16"),
        default="fp32",
        help="what fp16 reductions and norms accumulate in: fp32 (the hardware model, default) or fp16 (the "
        "pessimistic model of coremltools' value_inference; also reports each RMSNorm chain's overflow limits)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    add_verbosity(p)


def run(args):
    from ..analyses.verify import verify_packages

    report = verify_packages(
        args.reference, args.candidate, seed=args.seed, inputs_path=args.inputs, rtol=args.rtol, atol=args.atol,
        scale=args.scale, accumulate=args.accumulate,
    )
    return report, 0 if report.passed else 1
