"""The `mlopt` command line.

`main` installs the signal handlers before anything else is imported, so a Ctrl-C or SIGTERM at any moment after
Python has loaded this module ends in a one-line message, never a traceback. It restores the previous handlers
when it returns, so calling it in-process (tests, scripts) leaves no trace.
"""


def main(argv=None):
    from .. import signals

    previous = signals.install()
    try:
        try:
            from .app import run_cli
        except KeyboardInterrupt as e:
            return signals.exit_code(e)
        return run_cli(argv)
    finally:
        signals.restore(previous)


__all__ = ["main"]
