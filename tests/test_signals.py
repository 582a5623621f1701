"""Signal handling inside one process (mlopt/signals.py): where a signal is held, raised again, or honoured late.

Each test raises the signal itself at a chosen statement (`signal.raise_signal`), so where it lands is fixed; the
redelivery delay is set far beyond any test's length, so what the test sees never depends on a timer. The same
promises across process boundaries, at named points of a real run, are in tests/fuzz/test_processes.py.
"""

import signal
import sys
import weakref

import pytest

from conftest import fixture_path, op_types
from mlopt import signals
from mlopt.cli import main


@pytest.fixture
def handlers(monkeypatch):
    monkeypatch.setattr(signals, "REDELIVER_SECONDS", 3600.0)
    previous = signals.install()
    yield
    signals.finish(previous, process=False)


def _bytecodes():
    """A few statements: Python runs a pending signal handler between two of them."""
    total = 0
    for k in range(100):
        total += k
    return total


def test_a_signal_inside_an_import_is_held_until_the_import_has_finished(handlers, tmp_path, monkeypatch):
    (tmp_path / "slow_module.py").write_text(
        "import signal\nsignal.raise_signal(signal.SIGHUP)\ntotal = sum(range(1000))\nFINISHED = True\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import slow_module  # the signal lands in its body, inside the import machinery

    assert slow_module.FINISHED and sys.modules["slow_module"] is slow_module
    with pytest.raises(signals.Interrupted) as stopped:
        signals.check()  # now, outside it
    assert stopped.value.signum == signal.SIGHUP
    del sys.modules["slow_module"]


def test_an_interrupt_python_cannot_raise_is_raised_again_not_printed(handlers, capsys):
    class Thing:
        pass

    def callback(ref):  # a weakref callback: an exception raised here is "ignored" by Python
        signal.raise_signal(signal.SIGTERM)
        _bytecodes()

    thing = Thing()
    ref = weakref.ref(thing, callback)
    del thing  # runs the callback; the Interrupted raised in it reaches sys.unraisablehook
    assert ref() is None
    assert capsys.readouterr().err == ""
    with pytest.raises(signals.Interrupted) as stopped:
        signals.check()
    assert stopped.value.signum == signal.SIGTERM


def test_a_swallowed_interrupt_leaves_the_run_listening(handlers):
    try:
        signal.raise_signal(signal.SIGINT)
        _bytecodes()
    except KeyboardInterrupt:
        signal.raise_signal(signal.SIGTERM)  # lands while the interrupt is handled: recorded, not raised
        _bytecodes()
    assert signals.received().signum == signal.SIGINT
    with pytest.raises(signals.Interrupted):  # the next one, outside any handling, stops the run again
        signal.raise_signal(signal.SIGHUP)
        _bytecodes()


def test_a_signal_no_exception_carried_out_is_honoured_when_the_command_returns(tmp_path, capsys, monkeypatch):
    """A signal whose Interrupted Python dropped (here: raised in a weakref callback), never sent again: the run
    finishes, then reports it: 128 + N and the one line, the output complete."""
    from mlopt.cli import optimize_cmd

    monkeypatch.setattr(signals, "REDELIVER_SECONDS", 3600.0)
    real_run = optimize_cmd.run

    def run_with_a_lost_signal(args):
        class Thing:
            pass

        thing = Thing()
        ref = weakref.ref(thing, lambda r: (signal.raise_signal(signal.SIGHUP), _bytecodes()))
        del thing
        assert ref() is None
        return real_run(args)

    monkeypatch.setattr(optimize_cmd, "run", run_with_a_lost_signal)
    out = tmp_path / "out.mlpackage"
    code = main(["optimize", fixture_path("hf_fp16_ios17"), str(out)])
    text, err = capsys.readouterr()
    assert code == 129 and text == ""
    assert err == "mlopt: interrupted by SIGHUP after the output was written completely\n"
    assert "layer_norm" in op_types(str(out))


def test_main_restores_the_handlers_it_found(capsys):
    before = {s: signal.getsignal(s) for s in signals.CAUGHT}
    hook = sys.unraisablehook
    assert main(["inspect", fixture_path("hf_fp16_ios17")]) == 0
    capsys.readouterr()
    assert {s: signal.getsignal(s) for s in signals.CAUGHT} == before
    assert sys.unraisablehook is hook


def test_a_signal_inside_a_held_step_is_raised_as_the_step_ends(handlers):
    finished = []
    with pytest.raises(signals.Interrupted) as stopped:
        with signals.held():
            signal.raise_signal(signal.SIGTERM)
            _bytecodes()
            finished.append(True)
    assert finished == [True] and stopped.value.signum == signal.SIGTERM


def test_a_forked_child_ignores_signals_until_it_installs_its_own_handler(handlers):
    """A batch worker between fork and its initializer is idle: the parent's handler must not raise in it, nor
    may the signal end it."""
    import os

    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if the signal neither raised nor killed it
        try:
            signal.raise_signal(signal.SIGINT)
            _bytecodes()
            os._exit(0)
        except BaseException:
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
