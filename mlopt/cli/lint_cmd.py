"""`mlopt lint MODEL`: which ops risk running off the Neural Engine, by the limits the community has measured
(mlopt/analyses/ane_limits.py, docs/lint.md). Exit 0 without findings, 1 with findings, 2 for bad input."""

from .output import add_verbosity


def add_parser(commands):
    p = commands.add_parser(
        "lint",
        help="list the ops that risk running off the Neural Engine (static check, nothing is run)",
        description="Check every op of MODEL against the Neural Engine limits the community has measured "
        "(Apple documents none) and list each risk with its reason code, the limit and its public source. "
        "Exit code 1 when there are findings.",
    )
    p.add_argument("input", metavar="MODEL", help="the .mlpackage to check")
    p.add_argument("--function", action="append", metavar="NAME", dest="functions", help="check only function NAME (repeatable)")
    p.add_argument("--json", action="store_true", help="print the findings as JSON on stdout")
    add_verbosity(p)


def run(args):
    from ..analyses.lint import lint

    report = lint(args.input, function=args.functions)
    return report, report.exit_code
