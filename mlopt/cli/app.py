"""The `mlopt` command line: `optimize`, `inspect`, `verify` and `audit`, over the Python API.

Exit codes (docs/usage.md, "Exit codes"): 0 success; 2 bad input (one line naming the file and the problem, no
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
from ..pause_points import pause
from ..report import SCHEMA, printable
from .. import signals
from . import audit_cmd, inspect_cmd, lint_cmd, optimize_cmd, verify_cmd
from .output import logging_to_stderr

pause("import")  # a test can hold the run here, inside the import of the command line

COMMANDS = {"optimize": optimize_cmd, "inspect": inspect_cmd, "verify": verify_cmd, "audit": audit_cmd, "lint": lint_cmd}
CANNOT_VERIFY = 3  # `verify` could not run a model: nothing was compared
BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader left


class UsageError(BadInputError):
    """Arguments argparse refuses: one line (not argparse's usage block), exit 2, JSON with --json."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(self.prog, f"{message} (see {self.prog} --help)")


def build_parser():
    parser = _Parser(prog="mlopt", description="Post-hoc optimizer for Core ML ML programs.")
    parser.add_argument("--version", action="version", version=f"mlopt {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS.values():
        module.add_parser(commands)
    return parser


def run_cli(argv=None):
    args = None
    committed = _commits()
    try:
        args = build_parser().parse_args(argv)
        _check_cwd(args)
        with logging_to_stderr(args):
            result, code = COMMANDS[args.command].run(args)
            late = signals.unhandled()  # a signal whose exception never reached us (deferred, or lost): honoured
            if late is not None and code != signals.exit_code(late):
                return _interrupted(late, args, wrote=_commits() > committed)
            try:
                if args.json:
                    _print(json.dumps(result.to_dict(), indent=2))
                elif not args.quiet:
                    _print(result.render(verbose=True) if args.verbose else result.render())
                elif code and hasattr(result, "failure_lines"):  # -q: errors only, and a failed check is one
                    for line in result.failure_lines():
                        print(printable(line), file=sys.stderr)
            except BrokenPipeError:
                raise
            except OSError as e:  # `> /dev/full`: the work is done, only the report is lost
                problem = f"the report could not be printed ({e.strerror}); the {args.command} itself finished"
                return _fail(None, 1, "stdout", problem, f"mlopt: error: stdout: {problem}")
        return code
    except KeyboardInterrupt as e:
        signals.stop()
        return _interrupted(e, args, wrote=_commits() > committed)
    except BrokenPipeError:
        _silence_stdout()
        return BROKEN_PIPE
    except UsageError as e:
        wanted_json = argparse.Namespace(json=True, command=_command_in(argv)) if "--json" in (argv or sys.argv[1:]) else None
        where = "" if e.path == "mlopt" else f"{e.path}: "  # "mlopt optimize: ..." names the subcommand
        return _fail(wanted_json, 2, e.path, e.problem, f"mlopt: error: {where}{e.problem}")
    except Exception as e:
        if signals.received():  # whatever failed after a signal (an import cut short) is that interruption
            signals.stop()
            return _interrupted(signals.received(), args, wrote=_commits() > committed)
        if isinstance(e, MloptError):
            code = 2 if isinstance(e, BadInputError) else CANNOT_VERIFY if isinstance(e, CannotVerify) else 1
            return _fail(args, code, e.path, e.cli_problem, f"mlopt: error: {e.cli_text}")
        if os.environ.get("MLOPT_DEBUG"):  # our bug or limitation: one line, traceback on request
            traceback.print_exc()
        command = getattr(args, "command", "mlopt")
        problem = f"internal error: {type(e).__name__}: {e}"
        return _fail(args, 1, None, problem, f"mlopt: {command} failed: {type(e).__name__}: {e} (MLOPT_DEBUG=1 shows the traceback)")


def _command_in(argv):
    words = argv if argv is not None else sys.argv[1:]
    return next((w for w in words if w in COMMANDS), "optimize")


def _check_cwd(args):
    """A relative path cannot be resolved once the current folder was deleted: say so instead of crashing."""
    try:
        os.getcwd()
    except OSError:
        given = list(getattr(args, "paths", None) or [])
        given += [getattr(args, n, None) for n in ("input", "reference", "candidate", "out_dir", "inputs", "model")]
        relative = [p for p in given if p and not os.path.isabs(p)]
        if relative:
            raise BadInputError(relative[0], "is a relative path and the current folder no longer exists; give an absolute path") from None


def _commits():
    """Packages this process has put in place so far (package/writer.py), without importing the writer early."""
    writer = sys.modules.get("mlopt.package.writer")
    return writer.COMMITS[0] if writer is not None else 0


def _interrupted(interrupt, args, wrote=False):
    from ..package.writer import abort_all

    abort_all()  # whatever a writer had not cleaned up yet (an interrupt between two statements)
    name, code = signals.name(interrupt), signals.exit_code(interrupt)
    if wrote:  # the signal came after the output was in place: it is complete, say so
        problem = f"interrupted by {name} after the output was written completely"
        return _fail(args, code, None, problem, f"mlopt: {problem}")
    return _fail(args, code, None, f"interrupted by {name}", f"mlopt: interrupted by {name}; no partial output was left")


def _fail(args, code, path, problem, line):
    """The one error line on stderr; with --json also a JSON error object on stdout, for scripts."""
    if getattr(args, "json", False):
        kind = {2: "bad input", CANNOT_VERIFY: "cannot verify", 1: "failed"}.get(code, "interrupted")
        error = {"kind": kind, "path": path, "problem": problem, "exit_code": code}
        try:
            _print(json.dumps({"schema": SCHEMA, "command": args.command, "error": error}, indent=2))
        except (OSError, ValueError, AttributeError):
            _silence_stdout()
    try:
        print(printable(line), file=sys.stderr)
    except (OSError, ValueError, AttributeError):
        pass
    return code


def _print(text):
    if sys.stdout is None:  # started with stdout closed (`>&-`): nothing to print to
        return
    print(text)
    sys.stdout.flush()  # a closed pipe shows here, inside run_cli, not at interpreter exit


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
