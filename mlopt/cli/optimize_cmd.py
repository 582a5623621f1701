"""`mlopt optimize IN [OUT]`: rewrite RMSNorm chains and save a new package."""

from ..api import optimize_package
from ..errors import BadInputError
from ..optimize import COMPUTE_UNITS


def add_parser(commands):
    p = commands.add_parser(
        "optimize",
        help="rewrite RMSNorm chains to the ANE-friendly LayerNorm trick",
        description="Rewrite every RMSNorm chain of IN to layer_norm(concat([x, -x])) and save OUT.",
    )
    p.add_argument("input", metavar="IN", help="the .mlpackage to optimize (never modified)")
    p.add_argument("output", metavar="OUT", nargs="?", help="where to write the optimized .mlpackage")
    p.add_argument(
        "--compute-units",
        choices=COMPUTE_UNITS,
        default="CPU_AND_NE",
        help="the compute units the model targets; only CPU_AND_NE rewrites (default: %(default)s)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing OUT (OUT may then be IN)")
    p.add_argument("--dry-run", action="store_true", help="report what would change; write nothing")
    p.add_argument("--no-verify", action="store_true", help="skip the numerical self-check of each rewrite")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")


def run(args):
    if args.output is None and not args.dry_run:
        raise BadInputError(args.input, "no output path given (mlopt optimize IN OUT, or --dry-run)")
    report = optimize_package(
        args.input,
        args.output,
        compute_units=args.compute_units,
        force=args.force,
        dry_run=args.dry_run,
        verify=not args.no_verify,
    )
    return report, 0
