"""`mlopt inspect MODEL`: every candidate chain, where it is, what it was read as, or why it is left alone.

The answer to "why did my model not get faster?". It runs what `optimize --dry-run` runs, self-check included, so
what it lists as RMSNorm is exactly what `optimize` would rewrite.
"""

from .output import add_verbosity


def add_parser(commands):
    p = commands.add_parser(
        "inspect",
        help="list every candidate chain and why each would or would not be rewritten",
        description="List every candidate chain (a chain some rule recognised) of MODEL: function, op names, the chain as read, or the reason it is left alone.",
    )
    p.add_argument("input", metavar="MODEL", help="the .mlpackage to inspect")
    p.add_argument("--json", action="store_true", help="print the findings as JSON on stdout")
    add_verbosity(p)


class _Details:
    def __init__(self, report):
        self.report = report

    def render(self, verbose=False):
        return self.report.render_details()

    def to_dict(self):
        return self.report.to_inspect_dict()


def run(args):
    from ..api import optimize_package

    return _Details(optimize_package(args.input, dry_run=True)), 0
