"""The `mlopt` command line: `optimize`, `inspect` and `verify`, over the Python API.

Exit codes: 0 success, 2 bad input (one line naming the file and the problem, no traceback), 1 an internal error
or failed verification (one line; MLOPT_DEBUG=1 shows the traceback), 130 interrupted. Never imports
coremltools itself: start-up stays fast.
"""

import argparse
import json
import os
import sys
import traceback

from .._version import __version__
from ..errors import BadInputError
from . import inspect_cmd, optimize_cmd, verify_cmd

COMMANDS = {"optimize": optimize_cmd, "inspect": inspect_cmd, "verify": verify_cmd}


def build_parser():
    parser = argparse.ArgumentParser(prog="mlopt", description="Post-hoc optimizer for Core ML ML programs.")
    parser.add_argument("--version", action="version", version=f"mlopt {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS.values():
        module.add_parser(commands)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        result, code = COMMANDS[args.command].run(args)
    except BadInputError as e:
        print(f"mlopt: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mlopt: interrupted; nothing was written", file=sys.stderr)
        return 130
    except Exception as e:  # our bug or limitation: one line, traceback on request
        if os.environ.get("MLOPT_DEBUG"):
            traceback.print_exc()
        print(f"mlopt: {args.command} failed: {type(e).__name__}: {e} (MLOPT_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.render())
    return code


if __name__ == "__main__":
    sys.exit(main())
