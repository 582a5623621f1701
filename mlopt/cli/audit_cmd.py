"""`mlopt audit MODEL`: where the model stops being fp16-safe, from two runs in mlopt's interpreter (no Core ML).

Exit 0 when nothing was found, 1 with findings, 2 for bad input, 3 when the interpreter cannot run the model."""

from .output import add_verbosity


def add_parser(commands):
    p = commands.add_parser(
        "audit",
        help="run a package as an fp16 device would and in float64; report where it overflows, turns NaN or loses precision",
        description="Run MODEL on the same inputs as an fp16 device computes it and in float64, measure every op "
        "output (peaks, headroom below 65504, inf/NaN, flushed subnormals, error against float64) and report where "
        "problems start; also check the stored constants (inf/NaN in fp16, fp32 mask sentinels cast to fp16).",
    )
    p.add_argument("model", metavar="MODEL", help="the .mlpackage to audit")
    p.add_argument("--inputs", metavar="NPZ", help="inputs from an .npz (keys: input names, or function/input); "
                   "real inputs are what make real outliers appear")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default: %(default)s)")
    p.add_argument("--scale", type=float, default=1.0, help="standard deviation of the random float inputs (default: 1)")
    p.add_argument("--function", metavar="NAME", help="audit this function only (default: every function)")
    p.add_argument("--top", type=int, default=10, metavar="K", help="op outputs with the least headroom to list (default: %(default)s)")
    p.add_argument("--accumulate", choices=("fp32", "fp16"), default="fp32",
                   help="what fp16 reductions, norms and products accumulate in: fp32 (the hardware model, default) or fp16 (pessimistic)")
    p.add_argument("--subnormals", choices=("flush", "keep"), default="flush",
                   help="fp16 subnormals (below 6.1e-5) an op outputs: flushed to zero (the device assumption, default) or kept (IEEE)")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    add_verbosity(p)


def run(args):
    from ..analyses.audit import audit_package

    report = audit_package(
        args.model, inputs_path=args.inputs, seed=args.seed, scale=args.scale, function=args.function, top=args.top,
        accumulate=args.accumulate, subnormals=args.subnormals,
    )
    return report, 0 if report.passed else 1
