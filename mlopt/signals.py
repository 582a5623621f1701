"""Signals: SIGINT, SIGTERM and SIGHUP stop mlopt the same way, cleanly, whenever they land.

A signal raises `Interrupted` (a KeyboardInterrupt) in the main thread, so every `with`/`finally`/`except` on the
way out runs: the package writer removes its staging folder, a batch stops its workers. A signal that lands while
an interrupt is being handled (inside such a block) or once the run is stopping (`stop()`) is recorded, not raised
again, so a second Ctrl-C cannot cut the cleanup short. Any other signal raises: one whose exception was lost
does not leave the run deaf to the next.

Three places must never see the exception, because Python loses it there or is left broken by it: the import
machinery (an exception inside importlib's module-lock callbacks is printed and dropped, one inside its lock
handling leaves a traceback), finalizers (`__del__`) and os.fork()'s at-fork callbacks (printed and dropped, and
logging's lock left taken). A signal that lands in one is deferred: a redelivery thread sends it again to the main
thread REDELIVER_SECONDS later, until it lands outside them, so an import is never cut in the middle and the run
still stops a few milliseconds later. Steps that must not be split hold signals and raise them as they end
(`held()`; the package writer's rename step, package/writer.py). An Interrupted that Python drops anyway (handed
to sys.unraisablehook) is sent again too. A signal that no exception carried out of the command (still deferred
when it returned) is honoured by `unhandled()`; one that lands after that, as the process exits, ends it by the
signal's default action (`finish`).

The exit code is the shell's convention, 128 + the signal number: 130 (SIGINT), 143 (SIGTERM), 129 (SIGHUP).
SIGKILL cannot be caught; what it leaves is removed by the next run for the same OUT (package/staging.py).
"""

import os
import select
import signal
import sys
import threading
from contextlib import contextmanager

CAUGHT = (signal.SIGINT, signal.SIGTERM) + ((signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ())
REDELIVER_SECONDS = 0.01
_received = []  # every caught signal of this run, in order of arrival
_state = {"stopping": False, "deferred": None, "forking": False, "holding": 0, "thread": None, "wake": None, "wake_read": None}
_IMPORT_MACHINERY = ("<frozen importlib.", os.path.join("importlib", "_bootstrap"))


class Interrupted(KeyboardInterrupt):
    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_until_stopped(signum, frame):
    if isinstance(sys.exc_info()[1], KeyboardInterrupt):  # an interrupt is being handled: its cleanup runs on
        return
    raise Interrupted(_received[0])


def install(handler=_raise_until_stopped):
    """Route the caught signals to `handler(signum, frame)` (main thread only, as Python requires), recorded and
    kept away from the import machinery and finalizers (see above); returns the previous handlers for `restore`.
    A signal the parent set to be ignored stays ignored (`nohup mlopt ...` keeps running when the terminal
    closes)."""
    del _received[:]
    _stop_redeliverer()
    _state.update(stopping=False, deferred=None, holding=0)
    _watch_forks()
    _start_redeliverer()

    def deliver(signum, frame):
        if _state["deferred"] != signum:  # a redelivery is the same signal, recorded once
            _received.append(signum)
        if _state["stopping"]:
            return
        writer = sys.modules.get("mlopt.package.writer")
        if writer is not None and writer.holding_signals():  # a step that must not be split: sent again after it
            writer.HELD.append(signum)
            return
        if _state["forking"] or _state["holding"] or _in_unsafe_place(frame):
            _state["deferred"] = signum
            _redeliver_soon(signum)
            return
        _state["deferred"] = None
        handler(signum, frame)

    previous = {signum: signal.signal(signum, deliver) for signum in CAUGHT if signal.getsignal(signum) is not signal.SIG_IGN}
    previous[_UNRAISABLE] = sys.unraisablehook
    sys.unraisablehook = _lost_interrupt_raised_again(sys.unraisablehook)
    return previous


_UNRAISABLE = "sys.unraisablehook"


def _lost_interrupt_raised_again(fallback):
    """An unraisable hook (sys.unraisablehook): Python hands it the exceptions it cannot raise - one raised in
    a finalizer, a weakref callback, an at-fork callback (logging registers one, and a batch forks its workers).
    An Interrupted among them is not printed: its signal is sent again to the main thread, to land elsewhere."""

    def hook(unraisable):
        signum = getattr(unraisable.exc_value, "signum", None)
        if isinstance(unraisable.exc_value, Interrupted) and signum is not None:
            _state["deferred"] = signum
            _redeliver_soon(signum)
            return
        fallback(unraisable)

    return hook


def _watch_forks():
    """Mark the time os.fork() runs its at-fork callbacks (a batch forks its workers; logging's callbacks take
    and release its lock there, and an exception between the two would leave logging locked for good) as a
    place where signals are held. Registered once per process: ours run first before a fork and last after."""
    if _state.get("watching") or not hasattr(os, "register_at_fork"):
        return
    _state["watching"] = True

    def forking(flag):
        _state["forking"] = flag

    def in_child():  # a batch worker: signals are ignored until its initializer installs its own handler
        for fd in (_state["wake"], _state["wake_read"]):  # the parent's redelivery pipe; its thread is not here
            if fd is not None:
                os.close(fd)
        _state.update(forking=False, stopping=True, holding=0, deferred=None, thread=None, wake=None, wake_read=None)
        for signum in CAUGHT:
            if callable(signal.getsignal(signum)):
                signal.signal(signum, _ignore)

    os.register_at_fork(before=lambda: forking(True), after_in_parent=lambda: forking(False), after_in_child=in_child)


def _ignore(signum, frame):
    """A forked batch worker's handler until its initializer runs: idle, it has nothing to stop."""


@contextmanager
def held():
    """Signals landing inside are held, and raised as it ends: for steps an exception must not split (a batch
    starting its worker processes: a worker forked but not yet recorded by the pool would outlive the batch)."""
    _state["holding"] += 1
    try:
        yield
    finally:
        _state["holding"] -= 1
    if not _state["holding"]:
        check()


def _in_unsafe_place(frame):
    """Whether the main thread was stopped inside an import or a finalizer (on any frame of its stack)."""
    while frame is not None:
        code = frame.f_code
        if code.co_name == "__del__" or code.co_filename.startswith(_IMPORT_MACHINERY) or _IMPORT_MACHINERY[1] in code.co_filename:
            return True
        frame = frame.f_back
    return False


def _redeliver_soon(signum):
    """Ask the redelivery thread to send the deferred signal again in REDELIVER_SECONDS. Only a byte written to a
    pipe: the handler may have interrupted code holding any lock (starting a thread takes one), so it takes none."""
    if _state["wake"] is not None:
        try:
            os.write(_state["wake"], b"r")
        except OSError:  # the pipe is full: a wake-up is pending already
            pass


def _start_redeliverer():
    r, w = os.pipe()
    os.set_blocking(w, False)
    thread = threading.Thread(target=_redeliver_loop, args=(r, threading.main_thread().ident), name="mlopt-signals", daemon=True)
    _state.update(wake=w, wake_read=r, thread=thread)
    thread.start()


def _stop_redeliverer():
    thread, w = _state["thread"], _state["wake"]
    _state.update(thread=None, wake=None, wake_read=None)
    if thread is not None:
        try:
            os.write(w, b"q")
        except OSError:  # the thread is gone already
            pass
        thread.join()
        os.close(w)


def _redeliver_loop(r, main):
    """The redelivery thread: woken by a handler, it waits REDELIVER_SECONDS and sends the deferred signal to the
    main thread; b"q" (from `finish`) ends it."""
    def told_to_quit(data):
        return not data or b"q" in data  # b"" once the pipe's writer is gone

    poller = select.poll()  # not select.select: it cannot wait on a descriptor numbered 1024 or more
    poller.register(r, select.POLLIN)
    try:
        while not told_to_quit(os.read(r, 64)):
            if poller.poll(REDELIVER_SECONDS * 1000) and told_to_quit(os.read(r, 64)):
                return
            signum = _state["deferred"]
            if signum is not None and not _state["stopping"]:
                try:
                    signal.pthread_kill(main, signum)
                except (OSError, ValueError):
                    pass
    finally:
        os.close(r)


def check():
    """Raise now the signal that was deferred because it landed in an import that has since finished (the
    caller knows it is outside the import machinery), rather than when it is sent again."""
    if _state["deferred"] is not None and not _state["stopping"]:
        _state["deferred"] = None
        raise Interrupted(_received[0])


def stop():
    """The run is stopping for a signal (its Interrupted was caught): later signals are only recorded."""
    _state["stopping"] = True


def unhandled():
    """An Interrupted for a signal this run received that no exception carried to the code that stops it (lost,
    or deferred as the command returned), or None; from then on the run is stopping."""
    if _received and not _state["stopping"]:
        stop()
        return Interrupted(_received[0])
    return None


def restore(previous):
    for signum, handler in previous.items():
        if signum == _UNRAISABLE:
            sys.unraisablehook = handler
        else:
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def finish(previous, process):
    """End of the run: put the previous handlers back (for a process: the default actions) and return the
    signal that landed after the run's result was decided (or None). Signals are blocked meanwhile, so none
    reaches a handler that is being replaced; a process that got one ends by it (exit 128 + N, no traceback)."""
    stop()
    _stop_redeliverer()
    count = len(_received)
    blocked = hasattr(signal, "pthread_sigmask")
    if blocked:
        signal.pthread_sigmask(signal.SIG_BLOCK, CAUGHT)
    try:
        _let_pending_handlers_run()
        late = _received[count:]
        while blocked and hasattr(signal, "sigtimedwait"):
            pending = signal.sigtimedwait(CAUGHT, 0)
            if pending is None:
                break
            late.append(pending.si_signo)
        restore({s: signal.SIG_DFL if s != _UNRAISABLE else h for s, h in previous.items()} if process else previous)
    finally:
        if blocked:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, CAUGHT)
    if late and process:
        signal.raise_signal(late[0])  # the default action: the process ends by it
    return late[0] if late else None


def _let_pending_handlers_run():
    """A Python function call: Python runs the handlers of signals that arrived before the block here."""
    return None


def received():
    """An Interrupted for the signal received during this run, or None. Whatever fails after a signal (an import
    cut short surfaces as ImportError) is reported as that interruption, not as an error of its own."""
    return Interrupted(_received[0]) if _received else None


def exit_code(interrupt):
    """128 + the signal that stopped us (a plain KeyboardInterrupt is SIGINT)."""
    return 128 + getattr(interrupt, "signum", signal.SIGINT)


def name(interrupt):
    return signal.Signals(getattr(interrupt, "signum", signal.SIGINT)).name
