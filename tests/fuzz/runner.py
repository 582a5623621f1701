"""Run `python -m mlopt ...` as a real child process and measure what a user would see.

Why not `subprocess.run`: we need the child's peak RSS (only `os.wait4` returns the rusage of one particular
child), a hard timeout that kills the whole process group (batch mode forks workers, which must not outlive a hung
parent), signals delivered at a given delay (to the group, as a terminal does for Ctrl-C and hang-up), and a check
that no process of the group survives the parent. The child runs in its own session, with MLOPT_DEBUG unset so
tracebacks would only show if mlopt leaked them, stdout/stderr in temporary files (no pipe can fill up and block it
while we sit in wait4), or stdout a pipe we close early to test a broken pipe.
"""

import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

TIMEOUT = 30.0  # seconds (conftest: 15 in the fast set); a fixture takes ~0.2 s, the 200 MB package ~1 s
GROUP_SIGNALS = {signal.SIGINT, signal.SIGHUP}  # a terminal sends these to the foreground process group


@dataclass
class Result:
    argv: list
    code: int  # exit status; death by signal N is reported as 128 + N, the shell's convention
    how: str  # "exit 2", "killed by SIGSEGV", "hang (killed after 30 s)"
    stdout: str
    stderr: str
    maxrss_kb: int
    timed_out: bool
    stragglers: list  # descriptions of processes of the child's group still alive after it exited

    @property
    def first_stderr_line(self):
        return next((line for line in self.stderr.splitlines() if line.strip()), "")


class Child:
    """One `mlopt` process. `stdout="pipe"` gives a pipe in `self.proc.stdout`; `fsize` limits file sizes (a
    disk-full stand-in: Python ignores SIGXFSZ, so writes past it fail with EFBIG). `pause_at` names a point of
    mlopt/pause_points.py where the run waits: `paused()` returns once it is there, `resume()` lets it go on."""

    def __init__(self, argv, cwd=None, timeout=None, stdout=None, fsize=None, pause_at=None):
        self.argv = [str(a) for a in argv]
        self.timeout = timeout = timeout or TIMEOUT
        self._out = tempfile.TemporaryFile()
        self._err = tempfile.TemporaryFile()
        env = {k: v for k, v in os.environ.items() if k not in ("MLOPT_DEBUG", "MLOPT_PAUSE_AT")}
        self._ready = self._resume = None
        passed = ()
        if pause_at is not None:
            ready_r, ready_w = os.pipe()
            resume_r, resume_w = os.pipe()
            env["MLOPT_PAUSE_AT"] = f"{pause_at}:{ready_w}:{resume_r}"
            passed, self._ready, self._resume = (ready_w, resume_r), ready_r, resume_w
        # Always a preexec_fn, even a no-op: it makes Popen fork instead of vfork. A vforked child execs from our
        # own address space, and Linux then counts our peak RSS (hiwater) into the child's ru_maxrss.
        limit = (lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))) if fsize else (lambda: None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlopt", *self.argv], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout == "pipe" else self._out, stderr=self._err,
            start_new_session=True, preexec_fn=limit, pass_fds=passed,
        )
        for fd in passed:  # the child's ends
            os.close(fd)
        self.pid = self.proc.pid
        self.started = time.monotonic()
        self.timed_out = False
        self._timers = [threading.Timer(timeout, self._on_timeout)]
        self._timers[0].start()

    def paused(self):
        """Wait until the run reached its pause point; returns the point's name ("" if it exited first)."""
        line = b""
        while not line.endswith(b"\n"):
            chunk = os.read(self._ready, 64)
            if not chunk:
                break
            line += chunk
        return line.decode().strip()

    def resume(self):
        if self._resume is not None:
            os.close(self._resume)
            self._resume = None

    def send(self, sig):
        """Deliver `sig` now (to the group for SIGINT/SIGHUP); a process that already exited is no error."""
        try:
            if sig in GROUP_SIGNALS:
                os.killpg(self.pid, sig)
            else:
                os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def send_after(self, delay, sig):
        timer = threading.Timer(max(0.0, delay - (time.monotonic() - self.started)), self.send, (sig,))
        self._timers.append(timer)
        timer.start()

    def _on_timeout(self):
        self.timed_out = True
        _killpg(self.pid)

    def wait(self):
        _, status, usage = os.wait4(self.pid, 0)
        for timer in self._timers:
            timer.cancel()
        self.proc.returncode = code = os.waitstatus_to_exitcode(status)  # so Popen does not reap it again
        self.resume()
        if self._ready is not None:
            os.close(self._ready)
            self._ready = None
        stragglers = _stragglers(self.pid)
        if self.proc.stdout:
            self.proc.stdout.close()
        if code < 0:
            how, code = f"killed by {signal.Signals(-code).name}", 128 - code
        else:
            how = f"exit {code}"
        if self.timed_out:
            how = f"hang (killed after {self.timeout:g} s)"
        return Result(self.argv, code, how, _read(self._out), _read(self._err), usage.ru_maxrss, self.timed_out, stragglers)


def run_mlopt(argv, **kwargs):
    return Child(argv, **kwargs).wait()


def _read(f):
    f.seek(0)
    data = f.read().decode("utf-8", "replace")
    f.close()
    return data


def _killpg(pgid, sig=signal.SIGKILL):
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_members(pgid):
    """Live (non-zombie) processes of process group `pgid`, from /proc: zombies may linger unreaped in a container."""
    members = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(f"pid {pid} {stat[stat.index('(') : stat.rindex(')') + 1]}")
    return members


def _stragglers(pgid, grace=3.0):
    """Processes the child left running (batch workers): give them `grace` seconds to go, then kill them."""
    deadline = time.monotonic() + grace
    while (members := _group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.02)
    if members:
        _killpg(pgid)
    return members
