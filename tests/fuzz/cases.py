"""What a fuzz case is, how one runs, and the checks every run must pass.

A `Case` has an id that encodes all its parameters (family, variant, fixture, seed, command) and a `build`
function that lays out its files under tmp_path and returns a `Scenario`: the commands to run (`Run`) and the input
material that must come out byte-identical (`watch`). `execute` runs it and collects every broken rule into one
assertion message, whose first line is what the developers need: command, exit status, first stderr line.

The rules (the target behaviour; many cases fail until mlopt is fixed):
 1. the watched input trees are unchanged;
 2. no traceback on stderr; exit 2 means exactly one stderr line `mlopt: error: <path>: <problem>` naming the bad
    file (the package or a file in it, or OUT for output problems);
 3. the exit code is in the case's expected set (input mutations: {0, 2}, and 3 for `verify`, which may meet a
    well-formed program its interpreter cannot run; exit 1 is a crash on bad input);
 4. no `.mlopt-tmp-`/`.mlopt-old-` entry anywhere under tmp_path afterwards;
 5. no hang (runner.TIMEOUT);
 6. peak RSS below MAX_RSS_MB;
 7. after a failure OUT is absent, or unchanged if it existed before; after success it is a package.
"""

import os
import random
import shutil
import signal
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

from .runner import Child
from .tree import package_problem, staging_leftovers, tree_digest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "fixtures")
MAX_RSS_MB = 400
INPUT_ERRORS = frozenset({0, 2})  # a mutated input is either handled or refused as bad input
CANNOT_VERIFY = 3  # verify only: the interpreter cannot run a damaged but well-formed program (nothing compared)
COMMANDS = ("optimize", "verify", "inspect", "optimize-force", "batch")  # command_for's order for seeds 0..4
COMMAND_WEIGHTS = (4, 3, 3, 2, 1)  # batch (`--out-dir DIR --jobs 2`) starts worker processes: ~1 s, so rarer


def fixture_names():
    """'hf_fp16_ios17', ..., 'real.llama_fp16_ios15', ...: every committed package, sorted."""
    names = []
    for prefix, folder in (("", FIXTURES), ("real.", os.path.join(FIXTURES, "real"))):
        names += sorted(prefix + n[: -len(".mlpackage")] for n in os.listdir(folder) if n.endswith(".mlpackage"))
    return names


def fixture_path(name):
    folder, _, base = name.rpartition(".")  # folder is "" or "real"
    return os.path.join(FIXTURES, folder, base + ".mlpackage")


def copy_fixture(name, dest):
    shutil.copytree(fixture_path(name), dest, symlinks=True)
    return os.fspath(dest)


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable  # build(tmp_path) -> Scenario

    def __repr__(self):
        return self.id


@dataclass
class Run:
    argv: list
    expect: frozenset
    names: tuple  # an exit-2 error line must contain one of these paths
    outs: tuple = ()  # paths the command writes: absent/unchanged after a failure, packages after success
    batch: bool = False  # `--out-dir`: stderr carries one progress line per model
    complete: bool = False  # after success OUT must be a complete package (else: a folder with a Manifest.json)
    partial_ok: bool = False  # interrupted: OUT may also exist after a non-zero exit, if complete
    signals: tuple = ()  # (delay s, signal) sent while it runs: the outcome must be right wherever it lands
    pause: tuple = None  # (point, signal): the signal sent exactly at that point of mlopt/pause_points.py
    kill_mid_copy: bool = False  # SIGKILL in the middle of the copy (the staging folder is then left behind)
    stdout: str = None  # "closed": read end closed at once; "head": closed after reading 10 bytes
    fsize: int = None  # RLIMIT_FSIZE: the disk is "full" past this many bytes

    def start(self, cwd):
        pause = ("copy", signal.SIGKILL) if self.kill_mid_copy else self.pause
        child = Child(self.argv, cwd=cwd, stdout="pipe" if self.stdout else None, fsize=self.fsize,
                      pause_at=pause[0] if pause else None)
        for delay, sig in self.signals:
            child.send_after(delay, sig)
        if pause:
            point, sig = pause
            if child.paused() == point:
                child.send(sig)
            if point != "copy":  # at "copy" the run goes on by itself once the signal has cancelled the copy
                child.resume()
        if self.stdout == "head":
            child.proc.stdout.read(10)
        if self.stdout:
            child.proc.stdout.close()
        return child


@dataclass
class Scenario:
    runs: list
    watch: list = field(default_factory=list)  # input material that must not change
    concurrent: bool = False  # start every run together, then wait for all
    extra: Callable = None  # extra(results) -> problems: checks beyond the rules


def command_run(command, package, tmp_path, expect=INPUT_ERRORS, names=None):
    """The Run of one of COMMANDS on `package`, writing (if it writes) into tmp_path/out or tmp_path/outdir."""
    package = os.fspath(package)
    names = names or (package, os.path.realpath(package))
    out = os.path.join(tmp_path, "out", "o.mlpackage")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    if command == "optimize":
        return Run(["optimize", package, out], expect, names, outs=(out,))
    if command == "optimize-force":
        return Run(["optimize", package, out, "--force"], expect, names, outs=(out,))
    if command == "inspect":
        return Run(["inspect", package], expect, names)
    if command == "verify":
        return Run(["verify", package, package], expect | {CANNOT_VERIFY} if expect == INPUT_ERRORS else expect, names)
    if command == "batch":
        out_dir = os.path.join(tmp_path, "outdir")
        out = os.path.join(out_dir, os.path.basename(os.path.normpath(package)))
        return Run(["optimize", package, "--out-dir", out_dir, "--jobs", "2"], expect, names, outs=(out,), batch=True)
    raise ValueError(command)


def pick_command(rng):
    return rng.choices(COMMANDS, COMMAND_WEIGHTS)[0]


def command_for(seed, rng):
    """For a fixed variant tried with a few seeds: every command in turn, then random ones."""
    return COMMANDS[seed] if seed < len(COMMANDS) else pick_command(rng)


def seeded(family, count, make):
    """Cases `make(seed, rng)` for seeds 0..count-1, `rng = random.Random(f"{family}-{seed}")`: the fast set is a
    prefix of the full set, and a case's id alone reproduces it."""
    return [make(seed, random.Random(f"{family}-{seed}")) for seed in range(count)]


def package_case(case_id, fixture, mutate, command):
    """A case that copies `fixture` to tmp_path/in/<fixture>.mlpackage, applies `mutate(package)`, runs `command`."""
    return Case(case_id, partial(_build_package_case, fixture, mutate, command))


def _build_package_case(fixture, mutate, command, tmp_path):
    package = copy_fixture(fixture, tmp_path / "in" / f"{fixture}.mlpackage")
    mutate(package)
    return Scenario([command_run(command, package, tmp_path)], watch=[tmp_path / "in"])


def fuzz_cases(generator):
    """Mark a test as parametrised over `generator(full) -> [Case]` (conftest.pytest_generate_tests)."""

    def mark(test):
        test.fuzz_cases = generator
        return test

    return mark


def execute(scenario, tmp_path):
    """Run the scenario, check every rule, and fail with all broken ones."""
    watched = {os.fspath(p): tree_digest(p) for p in scenario.watch}
    problems = []
    if scenario.concurrent:
        before = [_outs_state(run) for run in scenario.runs]
        children = [run.start(tmp_path) for run in scenario.runs]
        results = [child.wait() for child in children]
        for run, result, outs in zip(scenario.runs, results, before):
            problems += check_run(run, result, outs)
    else:
        results = []
        for run in scenario.runs:
            outs = _outs_state(run)
            results.append(run.start(tmp_path).wait())
            problems += check_run(run, results[-1], outs)
    if scenario.extra:
        problems += scenario.extra(results)
    problems += [f"input changed: {p}" for p, digest in watched.items() if tree_digest(p) != digest]
    problems += [f"staging folder left: {p}" for p in staging_leftovers(tmp_path)]
    assert not problems, "\n".join(problems)
    # pytest keeps the last three sessions' tmp_paths, and some trees hold hundreds of MB: a passing case leaves
    # nothing; a failing one keeps its tree to look at
    shutil.rmtree(tmp_path, ignore_errors=True)
    return results


def check_run(run, result, outs_before):
    """Rules 2, 3, 5, 6, 7 for one finished run; returns the problems, each prefixed with what ran and how it ended."""
    problems = []
    if result.timed_out:
        problems.append("hang")
    elif result.code not in run.expect:
        problems.append(f"exit code not in {sorted(run.expect)}")
    if any(s in result.stderr for s in ("Traceback", "Exception ignored", "Process ForkProcess")):
        problems.append("traceback on stderr")
    if result.code in (2, CANNOT_VERIFY) and not run.kill_mid_copy:
        problems += _error_line_problems(run, result.stderr.splitlines())
    if result.maxrss_kb >= MAX_RSS_MB * 1024:
        problems.append(f"peak RSS {result.maxrss_kb // 1024} MB >= {MAX_RSS_MB} MB")
    if result.stragglers:
        problems.append(f"processes left running: {result.stragglers}")
    if not run.kill_mid_copy:
        for out, before in outs_before.items():
            problems += _out_problems(run, result, out, before)
    head = f"{run.argv[0]} {' '.join(os.path.basename(a) for a in run.argv[1:])}: {result.how}: {result.first_stderr_line!r}"
    return [f"{head}: {p}" for p in problems]


def _error_line_problems(run, lines):
    if run.batch:  # one progress line per model; the bad one must say which file
        return [] if any(n in line for line in lines for n in run.names) else [f"no stderr line names any of {run.names}"]
    if len(lines) != 1:
        return [f"exit code with {len(lines)} stderr lines"]
    if not lines[0].startswith("mlopt: error: "):
        return ["exit 2 without an 'mlopt: error: <path>: <problem>' line"]
    return [] if any(n in lines[0] for n in run.names) else [f"error line names none of {run.names}"]


def _outs_state(run):
    return {out: tree_digest(out) for out in run.outs}


def _out_problems(run, result, out, before):
    if result.code == 0 and not result.timed_out and run.argv[0] == "optimize":
        if run.complete:
            problem = package_problem(out)
        else:
            problem = None if os.path.isfile(os.path.join(out, "Manifest.json")) else "no Manifest.json"
        return [f"exit 0 but OUT {out} is not a complete package ({problem})"] if problem else []
    if run.partial_ok and os.path.lexists(out) and package_problem(out) is None:
        return []
    if before is None and os.path.lexists(out):
        return [f"OUT {out} exists after a failure"]
    if before is not None and tree_digest(out) != before:
        return [f"OUT {out} (existing) changed by a failed run"]
    return []
