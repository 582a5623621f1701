"""`mlopt optimize IN [OUT]`: the command line over `mlopt.optimize_package`.

Exit codes: 0 success, 2 bad input (one line naming the file and the problem, no traceback), 1 an internal error
(one line too; set MLOPT_DEBUG=1 for the traceback), 130 interrupted. Never imports coremltools itself: start-up
stays fast.
"""

import argparse
import json
import os
import sys
import traceback

from .._version import __version__
from ..api import optimize_package
from ..errors import BadInputError
from ..optimize import COMPUTE_UNITS


def build_parser():
    parser = argparse.ArgumentParser(prog="mlopt", description="Post-hoc optimizer for Core ML ML programs.")
    parser.add_argument("--version", action="version", version=f"mlopt {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    opt = commands.add_parser(
        "optimize",
        help="rewrite RMSNorm chains to the ANE-friendly LayerNorm trick",
        description="Rewrite every RMSNorm chain of IN to layer_norm(concat([x, -x])) and save OUT.",
    )
    opt.add_argument("input", metavar="IN", help="the .mlpackage to optimize (never modified)")
    opt.add_argument("output", metavar="OUT", nargs="?", help="where to write the optimized .mlpackage")
    opt.add_argument(
        "--compute-units",
        choices=COMPUTE_UNITS,
        default="CPU_AND_NE",
        help="the compute units the model targets; only CPU_AND_NE rewrites (default: %(default)s)",
    )
    opt.add_argument("--force", action="store_true", help="replace an existing OUT (OUT may then be IN)")
    opt.add_argument("--dry-run", action="store_true", help="report what would change; write nothing")
    opt.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        if args.output is None and not args.dry_run:
            raise BadInputError(args.input, "no output path given (mlopt optimize IN OUT, or --dry-run)")
        report = optimize_package(
            args.input, args.output, compute_units=args.compute_units, force=args.force, dry_run=args.dry_run
        )
    except BadInputError as e:
        print(f"mlopt: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mlopt: interrupted; nothing was written", file=sys.stderr)
        return 130
    except Exception as e:  # our bug: one line, traceback on request
        if os.environ.get("MLOPT_DEBUG"):
            traceback.print_exc()
        print(f"mlopt: internal error on {args.input}: {type(e).__name__}: {e} (MLOPT_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
