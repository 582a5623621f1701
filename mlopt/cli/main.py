"""The `mlopt` command line: `optimize`, `inspect` and `verify`, over the Python API.

Exit codes (README, "Exit codes"): 0 success; 2 bad input (one line naming the file and the problem, no
traceback); 3 `verify` cannot run a model in its interpreter (nothing was compared); 1 failed (outputs differ,
the output could not be written, or an internal error: one line, MLOPT_DEBUG=1 shows the traceback); 128 + N
when stopped by signal N (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP); 141 when the reader of stdout went away
(`| head`). Never imports coremltools itself: start-up stays fast.
"""

import argparse
import json
import os
import sys
import traceback

from .._version import __version__
from ..errors import BadInputError, CannotVerify, MloptError
from . import inspect_cmd, optimize_cmd, signals, verify_cmd

COMMANDS = {"optimize": optimize_cmd, "inspect": inspect_cmd, "verify": verify_cmd}
CANNOT_VERIFY = 3  # `verify` could not run a model: nothing was compared
BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader left


def build_parser():
    parser = argparse.ArgumentParser(prog="mlopt", description="Post-hoc optimizer for Core ML ML programs.")
    parser.add_argument("--version", action="version", version=f"mlopt {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS.values():
        module.add_parser(commands)
    return parser


def run_cli(argv=None):
    command = "mlopt"
    try:
        args = build_parser().parse_args(argv)
        command = args.command
        result, code = COMMANDS[args.command].run(args)
        _print(json.dumps(result.to_dict(), indent=2) if args.json else result.render())
        return code
    except KeyboardInterrupt as e:
        return _interrupted(e)
    except BrokenPipeError:
        _silence_stdout()
        return BROKEN_PIPE
    except MloptError as e:
        if signals.received():
            return _interrupted(signals.received())
        code = 2 if isinstance(e, BadInputError) else CANNOT_VERIFY if isinstance(e, CannotVerify) else 1
        return _fail(f"mlopt: error: {e}", code)
    except Exception as e:  # our bug or limitation: one line, traceback on request
        if signals.received():
            return _interrupted(signals.received())
        if os.environ.get("MLOPT_DEBUG"):
            traceback.print_exc()
        return _fail(f"mlopt: {command} failed: {type(e).__name__}: {e} (MLOPT_DEBUG=1 shows the traceback)", 1)


def _interrupted(interrupt):
    from ..package.writer import abort_all

    abort_all()  # whatever a writer had not cleaned up yet (an interrupt between two statements)
    return _fail(f"mlopt: interrupted by {signals.name(interrupt)}; no partial output was left", signals.exit_code(interrupt))


def _print(text):
    print(text)
    sys.stdout.flush()  # a closed pipe shows here, inside run_cli, not at interpreter exit


def _fail(message, code):
    try:
        print(message, file=sys.stderr)
    except (BrokenPipeError, OSError):
        pass
    return code


def _silence_stdout():
    """After EPIPE: point stdout at /dev/null so Python's final flush does not fail again (Python docs, 'SIGPIPE')."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(run_cli())
