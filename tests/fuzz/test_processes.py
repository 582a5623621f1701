"""mlopt as a process among others: interrupted by signals at named points and at various moments, killed
outright, racing another mlopt for the same OUT, writing into a pipe that was closed.

A signal at a named point (mlopt/pause_points.py: the run waits there until the signal is sent) has exactly one
right outcome, asserted here; a signal after a delay lands wherever the machine's load puts it, so those cases
assert only what is right for every landing moment (finished, or interrupted with nothing partial). The 200 MB
package (conftest.big_package) makes a delayed signal likely to land in the middle of the copy."""

import os
import signal
from functools import partial

from .cases import INPUT_ERRORS, Case, Run, Scenario, copy_fixture, execute, fuzz_cases
from .mutators import WEIGHTS
from .tree import package_problem, tree_digest

DELAYS = (0.05, 0.15, 0.3, 0.6)
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
FAST_SIGNALS = ((signal.SIGINT, 0.15), (signal.SIGTERM, 0.3), (signal.SIGHUP, 0.05))


def interrupted(sig, delay, big, tmp_path):
    """optimize BIG OUT, `sig` after `delay` s: finished (0) or interrupted (128 + sig), never a partial OUT."""
    out = tmp_path / "out" / "o.mlpackage"
    out.parent.mkdir()
    run = Run(["optimize", big, str(out)], frozenset({0, 128 + sig}), (big, str(out)), outs=(str(out),),
              complete=True, partial_ok=True, signals=((delay, sig),))
    return Scenario([run], watch=[big])


POINTS = ("import", "copy-start", "copy", "rename", "after-rename")
WRITTEN = ("rename", "after-rename")  # the signal is honoured once the output is in place


def at_point(point, sig, big, tmp_path):
    """optimize IN OUT, `sig` sent exactly at `point`: 128 + sig and the one line saying whether OUT was written;
    OUT complete after "rename"/"after-rename", absent (its created parent too) before."""
    if point == "copy-start":  # the 200 MB package: its copy is still running when the held signal is raised
        package = big
    else:
        package = copy_fixture("decoder_fp16_ios17", tmp_path / "in" / "a.mlpackage")
    out = tmp_path / "out" / "new" / "o.mlpackage"
    (tmp_path / "out").mkdir()
    name = signal.Signals(sig).name
    line = (f"mlopt: interrupted by {name} after the output was written completely" if point in WRITTEN
            else f"mlopt: interrupted by {name}; no partial output was left")
    run = Run(["optimize", package, str(out)], frozenset({128 + sig}), (package,), outs=(str(out),), complete=True,
              partial_ok=point in WRITTEN, pause=(point, sig))

    def exactly(results):
        problems = [] if results[0].stderr == line + "\n" else [f"stderr {results[0].stderr!r}, expected {line!r}"]
        if point in WRITTEN and package_problem(str(out)):
            problems.append(f"OUT is not a complete package ({package_problem(str(out))})")
        if point not in WRITTEN and os.path.lexists(out.parent):
            problems.append("the parent folder this run created is still there")
        return problems

    return Scenario([run], watch=[package], extra=exactly)


SPLIT_HEAD_POINTS = ("copy", "weights", "rename", "after-rename")  # "weights": the staged weight file updated in place


def at_point_split_head(point, sig, target, big, tmp_path):
    """optimize a split head (its weight file updated in place over the run's private copy), `sig` exactly at
    `point`, with --force onto an existing package (`target` "existing") or onto IN itself ("in place"): the one
    line, the input untouched before the rename, OUT complete after it, and no staging folder nor the package
    --force replaced left anywhere (the rule every case checks) - also when the signal lands at the rename."""
    package = copy_fixture("wide.llama_32000_fp16_ios17", tmp_path / "in" / "a.mlpackage")
    if target == "in place":
        out = package
    else:
        out = copy_fixture("decoder_fp16_ios17", tmp_path / "out" / "o.mlpackage")
    before = {p: tree_digest(p) for p in (package, out)}
    name = signal.Signals(sig).name
    line = (f"mlopt: interrupted by {name} after the output was written completely" if point in WRITTEN
            else f"mlopt: interrupted by {name}; no partial output was left")
    run = Run(["optimize", package, out, "--force"], frozenset({128 + sig}), (package,), outs=(out,), complete=True,
              partial_ok=point in WRITTEN, pause=(point, sig))

    def exactly(results):
        problems = [] if results[0].stderr == line + "\n" else [f"stderr {results[0].stderr!r}, expected {line!r}"]
        if point in WRITTEN:
            if package_problem(out):
                problems.append(f"OUT is not a complete package ({package_problem(out)})")
            if tree_digest(out) == before[out]:
                problems.append("OUT was not replaced")
        elif tree_digest(out) != before[out]:
            problems.append("OUT changed although the run was interrupted before the rename")
        if target != "in place" and tree_digest(package) != before[package]:
            problems.append("the input changed")
        return problems

    return Scenario([run], extra=exactly)


def killed_then_rerun(big, tmp_path):
    """SIGKILL in the middle of the copy leaves a staging folder; the next run for the same OUT removes it."""
    out = tmp_path / "out" / "o.mlpackage"
    out.parent.mkdir()
    argv = ["optimize", big, str(out)]
    first = Run(argv, frozenset({128 + signal.SIGKILL}), (big,), outs=(str(out),), kill_mid_copy=True)
    return Scenario([first, Run(argv, frozenset({0}), (big,), outs=(str(out),), complete=True)], watch=[big])


def batch_interrupted(delay, big, tmp_path):
    """Ctrl-C (SIGINT to the process group) during `--jobs 2`: no worker traceback, finished outputs only."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    second = copy_fixture("decoder_fp16_ios17", inputs / "big2.mlpackage")
    os.remove(os.path.join(second, WEIGHTS))
    os.link(os.path.join(big, WEIGHTS), os.path.join(second, WEIGHTS))  # a second large input, without the copy
    small = [copy_fixture(name, inputs / f"{name}.mlpackage") for name in ("hf_fp16_ios17", "textbook_eps_fp32_ios17")]
    packages = [big, second, *small]
    out_dir = tmp_path / "outdir"
    outs = tuple(str(out_dir / os.path.basename(p)) for p in packages)
    run = Run(["optimize", *packages, "--out-dir", str(out_dir), "--jobs", "2"], frozenset({0, 130}), tuple(packages),
              outs=outs, complete=True, partial_ok=True, batch=True, signals=((delay, signal.SIGINT),))
    return Scenario([run], watch=[big, inputs])


def racing_writers(fixture, big, tmp_path):
    """Two `optimize IN OUT` started together without --force: one writes OUT, the other says it exists."""
    package = copy_fixture(fixture, tmp_path / "in" / "a.mlpackage")
    out = str(tmp_path / "out" / "o.mlpackage")
    os.makedirs(os.path.dirname(out))
    runs = [Run(["optimize", package, out], INPUT_ERRORS, (out,), outs=(out,), complete=True, partial_ok=True) for _ in range(2)]

    def one_winner(results):
        codes = sorted(r.code for r in results)
        problems = [] if codes == [0, 2] else [f"race: exit codes {codes}, expected one 0 and one 2"]
        loser = next((r for r in results if r.code == 2), None)
        if loser and "exists" not in loser.stderr:
            problems.append(f"race: the refused run does not say OUT exists: {loser.first_stderr_line!r}")
        if package_problem(out):
            problems.append(f"race: OUT is not a complete package ({package_problem(out)})")
        return problems

    return Scenario(runs, watch=[tmp_path / "in"], concurrent=True, extra=one_winner)


def broken_pipe(argv, how, fixture, big, tmp_path):
    """`mlopt ... | head -c 10`: stdout's reader goes away; the command may fail but must not spew a traceback."""
    package = copy_fixture(fixture, tmp_path / "in" / "a.mlpackage")
    out = str(tmp_path / "out" / "o.mlpackage")
    run = Run([a.format(p=package, out=out) for a in argv], frozenset({0, 1, 128 + signal.SIGPIPE}), (package,),
              outs=(out,) if "{out}" in argv else (), partial_ok=True, stdout=how)
    return Scenario([run], watch=[tmp_path / "in"])


def process_cases(full):
    signal_runs = [(s, d) for s in SIGNALS for d in DELAYS] if full else FAST_SIGNALS
    cases = [Case(f"signal-{signal.Signals(s).name}-at-{p}-optimize", partial(at_point, p, s)) for p in POINTS for s in SIGNALS]
    cases += [Case(f"signal-{signal.Signals(s).name}-{d}s-optimize-big", partial(interrupted, s, d)) for s, d in signal_runs]
    cases += [Case(f"signal-{signal.Signals(s).name}-at-{p}-optimize-split-head-force-existing",
                   partial(at_point_split_head, p, s, "existing")) for p in SPLIT_HEAD_POINTS for s in SIGNALS]
    cases += [Case(f"signal-SIGINT-at-{p}-optimize-split-head-in-place", partial(at_point_split_head, p, signal.SIGINT, "in place"))
              for p in SPLIT_HEAD_POINTS]
    cases.append(Case("signal-SIGKILL-mid-copy-then-rerun-big", killed_then_rerun))
    cases += [Case(f"signal-SIGINT-{d}s-batch-jobs2-big", partial(batch_interrupted, d)) for d in (DELAYS if full else (0.3,))]
    fixtures = ("hf_fp16_ios17", "decoder_fp16_ios17", "real.decoder_qwen3_mixed_ios18", "textbook_eps_fp32_ios17")
    cases += [Case(f"race-same-out-{f}-round{k}", partial(racing_writers, f)) for k in range(4 if full else 1) for f in (fixtures if full else fixtures[:1])]
    pipes = {
        "inspect-json": ["inspect", "{p}", "--json"],
        "verify-json": ["verify", "{p}", "{p}", "--json"],
        "optimize-json": ["optimize", "{p}", "{out}", "--json"],
    }
    for name, argv in pipes.items():
        for how in ("closed", "head"):
            for fixture in ("real.decoder_qwen3_mixed_ios18", "hf_fp16_ios17") if full else ("real.decoder_qwen3_mixed_ios18",):
                cases.append(Case(f"pipe-{how}-{name}-{fixture}", partial(broken_pipe, argv, how, fixture)))
    return cases


@fuzz_cases(process_cases)
def test_process(case, big_package, tmp_path):
    execute(case.build(big_package, tmp_path), tmp_path)
