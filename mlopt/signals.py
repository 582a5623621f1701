"""Signals: SIGINT, SIGTERM and SIGHUP stop mlopt the same way, cleanly.

The first of them raises `Interrupted` (a KeyboardInterrupt) in the main thread, so every `with`/`finally` on the
way out runs: the package writer removes its staging folder, a batch stops its workers. Signals arriving while
that cleanup runs are recorded, not raised again, so a second Ctrl-C cannot cut the cleanup short. The exit
code is the shell's convention, 128 + the signal number: 130 (SIGINT), 143 (SIGTERM), 129 (SIGHUP). SIGKILL cannot
be caught; what it leaves is removed by the next run for the same OUT (package/staging.py).
"""

import signal

CAUGHT = (signal.SIGINT, signal.SIGTERM) + ((signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ())
_received = []


class Interrupted(KeyboardInterrupt):
    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_once(signum, frame):
    if _received:
        return
    _received.append(signum)
    raise Interrupted(signum)


def install(handler=_raise_once):
    """Route the caught signals to `handler` (main thread only, as Python requires); returns the previous
    handlers for `restore`. A signal the parent set to be ignored stays ignored (`nohup mlopt ...` keeps running
    when the terminal closes)."""
    del _received[:]
    return {
        signum: signal.signal(signum, handler)
        for signum in CAUGHT
        if signal.getsignal(signum) is not signal.SIG_IGN
    }


def restore(previous):
    for signum, handler in previous.items():
        signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def received():
    """An Interrupted for the signal received during this run, or None. Whatever fails after a signal (an import
    cut short surfaces as ImportError) is reported as that interruption, not as an error of its own."""
    return Interrupted(_received[0]) if _received else None


def exit_code(interrupt):
    """128 + the signal that stopped us (a plain KeyboardInterrupt is SIGINT)."""
    return 128 + getattr(interrupt, "signum", signal.SIGINT)


def name(interrupt):
    return signal.Signals(getattr(interrupt, "signum", signal.SIGINT)).name
