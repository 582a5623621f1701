"""The `mlopt` command line.

`main` takes the signals over before anything else is imported (mlopt/signals.py): from its first line to its
return, a Ctrl-C, SIGTERM or SIGHUP ends the run with 128 + N and one line, imports included. Called with no
arguments (the `mlopt` command, `python -m mlopt`) it leaves each signal its default action on return, so one
that lands as the process exits ends it by that signal (128 + N, no traceback); called with arguments (tests,
scripts) it restores the handlers it found and leaves no trace. Only with no arguments, where the process is the
command, does it also set numpy's BLAS to one thread if the user chose no number (cli/blas_threads.py).
"""

import sys


def main(argv=None):
    try:
        from .. import signals

        previous = signals.install()
        if argv is None:  # the process is the command: its BLAS may run one thread (blas_threads.py says why)
            from . import blas_threads

            blas_threads.limit()
    except KeyboardInterrupt:  # Ctrl-C before the handlers were in place: Python's own handler raised it
        return _interrupted_outside_run_cli(None, 0)
    committed, code = _commits(), None
    try:
        try:
            from .app import run_cli

            signals.check()  # a signal that landed in those imports stops the run here
            code = run_cli(argv)  # reports every interrupt that lands inside it itself
        except KeyboardInterrupt as e:  # one that landed around it
            signals.stop()
            code = _interrupted_outside_run_cli(e, committed)
    finally:
        late = signals.finish(previous, process=argv is None)
    return 128 + late if late is not None and code == 0 else code


def _commits():
    writer = sys.modules.get("mlopt.package.writer")
    return writer.COMMITS[0] if writer is not None else 0


def _interrupted_outside_run_cli(interrupt, committed):
    """The one line for a signal that landed before run_cli took over or after it returned."""
    from signal import SIGINT, Signals

    name = Signals(getattr(interrupt, "signum", SIGINT)).name
    if _commits() > committed:
        line = f"mlopt: interrupted by {name} after the output was written completely"
    else:
        line = f"mlopt: interrupted by {name}; no partial output was left"
    try:
        print(line, file=sys.stderr)
    except (OSError, ValueError, AttributeError):
        pass
    return 128 + getattr(interrupt, "signum", SIGINT)


__all__ = ["main"]
