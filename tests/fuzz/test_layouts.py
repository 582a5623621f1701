"""Hostile file-system layouts: inputs and outputs reached through symlinks, parts of a package living outside it,
`--force` aimed at things that are not a previous output, and output locations that cannot be written."""

import os

import pytest

from .cases import (
    COMMANDS, INPUT_ERRORS, Case, Run, Scenario, command_run, copy_fixture, execute, fuzz_cases, package_case,
)
from .mutators import WEIGHTS

FIXTURE = "hf_fp16_ios17"
REFUSED = frozenset({2})


def _package(path, fixture=FIXTURE):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return copy_fixture(fixture, path)


def _optimize(src, out, *options, expect=INPUT_ERRORS, names=None, **run):
    """`optimize SRC OUT`; by default input-side: an error names SRC, success leaves a complete OUT."""
    argv = ["optimize", str(src), str(out), *options]
    return Run(argv, expect, tuple(map(str, names or (src, os.path.realpath(src)))), outs=(str(out),), complete=True, **run)


# --- packages with parts outside them: any command -------------------------------------------------------------------
# Each edits the package at `p`; what lives "outside" goes next to it, under tmp_path/in (watched).

def _data_outside(p):
    os.rename(os.path.join(p, "Data"), os.path.join(os.path.dirname(p), "data"))
    os.symlink("../data", os.path.join(p, "Data"))


def _large_outside(p):
    large = os.path.join(os.path.dirname(p), "large.bin")
    with open(large, "wb") as f:
        f.truncate(512 << 20)  # sparse: costs no disk until someone copies it
    os.symlink(large, os.path.join(p, "Data", "com.apple.CoreML", "large.bin"))


def _weights_outside(p):
    outside = os.path.join(os.path.dirname(p), "outside.bin")
    os.rename(os.path.join(p, WEIGHTS), outside)
    os.symlink(outside, os.path.join(p, WEIGHTS))


INPUT_LAYOUTS = {
    "data-outside": _data_outside,
    "extra-passwd": lambda p: os.symlink("/etc/passwd", os.path.join(p, "Data", "extra")),
    "large-outside": _large_outside,
    "weights-outside": _weights_outside,
}


def _complete(case):
    """The input layouts are valid packages: success must leave a complete OUT, not just a folder."""

    def build(tmp_path):
        scenario = case.build(tmp_path)
        for run in scenario.runs:
            run.complete = True
        return scenario

    return Case(case.id, build)


# --- fixed scenarios: tmp_path -> Scenario ---------------------------------------------------------------------------

def symlinked_parent(tmp_path):
    """r/real/a.mlpackage, r/link -> real: optimize r/link/a.mlpackage r/link/b.mlpackage."""
    real = _package(tmp_path / "r" / "real" / "a.mlpackage")
    os.symlink("real", tmp_path / "r" / "link")
    link = tmp_path / "r" / "link"
    return Scenario([_optimize(link / "a.mlpackage", link / "b.mlpackage")], watch=[real])


def symlinked_input(*options):
    """r/l.mlpackage -> a.mlpackage: optimize r/l.mlpackage r/b.mlpackage OPTIONS."""

    def build(tmp_path):
        real = _package(tmp_path / "r" / "a.mlpackage")
        os.symlink("a.mlpackage", tmp_path / "r" / "l.mlpackage")
        return Scenario([_optimize(tmp_path / "r" / "l.mlpackage", tmp_path / "r" / "b.mlpackage", *options)], watch=[real, tmp_path / "r" / "l.mlpackage"])

    return build


def in_place(src, out):
    """In place (--force) through symlinks: r/link -> real, r/real/l.mlpackage -> a.mlpackage. IN may change (it is
    OUT), but only into a complete package, and a refusal leaves both paths as they were."""

    def build(tmp_path):
        r = tmp_path / "r"
        real = _package(r / "real" / "a.mlpackage")
        os.symlink("real", r / "link")
        os.symlink("a.mlpackage", r / "real" / "l.mlpackage")
        run = _optimize(r / src, r / out, "--force", names=(r / src, r / out, real))
        run.outs = (str(r / out), real)
        return Scenario([run])

    return build


def force_onto_folder(tmp_path):
    """OUT is a plain folder holding a user's file: --force must not delete it."""
    out = tmp_path / "out" / "plain"
    out.mkdir(parents=True)
    (out / "keep.txt").write_text("mine")
    return Scenario([_optimize(_package(tmp_path / "in" / "a.mlpackage"), out, "--force", expect=REFUSED, names=(out,))])


def force_onto_parent_of_input(tmp_path):
    package = _package(tmp_path / "in" / "r" / "a.mlpackage")
    out = tmp_path / "in" / "r"
    return Scenario([_optimize(package, out, "--force", expect=REFUSED, names=(out,))], watch=[tmp_path / "in"])


def output_inside_input(*options):
    def build(tmp_path):
        package = _package(tmp_path / "in" / "a.mlpackage")
        out = os.path.join(package, "Data", "x.mlpackage")
        return Scenario([_optimize(package, out, *options, expect=REFUSED, names=(out,))], watch=[tmp_path / "in"])

    return build


def force_onto_symlink_to_package(tmp_path):
    """OUT -> another package: replacing the link is fine, writing through it into that package is not."""
    package = _package(tmp_path / "in" / "a.mlpackage")
    other = _package(tmp_path / "in" / "other.mlpackage", fixture="textbook_eps_fp32_ios17")
    out = tmp_path / "out" / "l.mlpackage"
    out.parent.mkdir()
    os.symlink(other, out)
    return Scenario([_optimize(package, out, "--force", names=(package, out))], watch=[tmp_path / "in"])


def output_under_file(tmp_path):
    """OUT's parent is a regular file (as root, chmod cannot make a folder unwritable: this can't be written)."""
    blocker = tmp_path / "out" / "file"
    blocker.parent.mkdir()
    blocker.write_text("x")
    out = blocker / "o.mlpackage"
    package = _package(tmp_path / "in" / "a.mlpackage")
    return Scenario([_optimize(package, out, expect=REFUSED, names=(out, blocker))], watch=[tmp_path / "in", blocker])


def output_read_only(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders; output_under_file covers an unwritable OUT")
    folder = tmp_path / "out" / "ro"
    folder.mkdir(parents=True)
    folder.chmod(0o555)
    out = folder / "o.mlpackage"
    return Scenario([_optimize(_package(tmp_path / "in" / "a.mlpackage"), out, expect=REFUSED, names=(out,))], watch=[tmp_path / "in"])


def output_under_dev_null(tmp_path):
    out = "/dev/null/o.mlpackage"
    return Scenario([_optimize(_package(tmp_path / "in" / "a.mlpackage"), out, expect=REFUSED, names=(out,))], watch=[tmp_path / "in"])


def out_dir(where):
    """`--out-dir DIR --jobs 2` where DIR is a regular file ("file") or inside the input package ("inside-input")."""

    def build(tmp_path):
        package = _package(tmp_path / "in" / "a.mlpackage")
        if where == "file":
            target = tmp_path / "out" / "file"
            target.parent.mkdir()
            target.write_text("x")
        else:
            target = tmp_path / "in" / "a.mlpackage" / "Data" / "outs"
        run = Run(["optimize", package, "--out-dir", str(target), "--jobs", "2"], REFUSED, (str(target),), outs=(str(target / "a.mlpackage"),), batch=True)
        return Scenario([run], watch=[tmp_path / "in", target])

    return build


def disk_full(tmp_path):
    """Files may not grow past 64 KB (RLIMIT_FSIZE) and the weights are 190 KB: writing fails midway -> exit 1."""
    package = _package(tmp_path / "in" / "a.mlpackage", fixture="real.decoder_qwen3_mixed_ios18")
    return Scenario([_optimize(package, tmp_path / "out" / "o.mlpackage", expect=frozenset({1}), fsize=64 << 10)], watch=[tmp_path / "in"])


SCENARIOS = {
    "symlink-parent": symlinked_parent,
    "symlink-in": symlinked_input(),
    "symlink-in-link": symlinked_input("--link"),
    "symlink-in-compute-units-all": symlinked_input("--compute-units", "ALL"),
    "symlink-in-link-compute-units-all": symlinked_input("--link", "--compute-units", "ALL"),
    "inplace-in-via-link": in_place("real/l.mlpackage", "real/a.mlpackage"),
    "inplace-out-via-link": in_place("real/a.mlpackage", "real/l.mlpackage"),
    "inplace-via-parent-link": in_place("link/a.mlpackage", "real/a.mlpackage"),
    "force-onto-folder": force_onto_folder,
    "force-onto-parent-of-in": force_onto_parent_of_input,
    "force-inside-in": output_inside_input("--force"),
    "force-onto-symlink-to-package": force_onto_symlink_to_package,
    "out-inside-in": output_inside_input(),
    "out-under-file": output_under_file,
    "out-read-only": output_read_only,
    "out-under-dev-null": output_under_dev_null,
    "outdir-file": out_dir("file"),
    "outdir-inside-in": out_dir("inside-input"),
    "out-disk-full": disk_full,
}


def hub_cached(command, escaping):
    """A package in a Hugging Face cache (tests/hub_layout.py), run as a process by `command`: read through its
    links into blobs/ (exit 0, OUT complete), or, with the weight link climbing out of blobs/, refused (exit 2)."""

    def build(tmp_path):
        from hub_layout import WEIGHTS as LINKED, hub_cache

        package = hub_cache(tmp_path / "in")
        if escaping:
            link = os.path.join(package, LINKED)
            with open(link, "rb") as f:
                (tmp_path / "in" / "elsewhere").write_bytes(f.read())
            os.remove(link)
            os.symlink("../" * 7 + "blobs/../../elsewhere", link)
        run = command_run(command, package, tmp_path, expect=REFUSED if escaping else frozenset({0}))
        run.complete = True
        return Scenario([run], watch=[tmp_path / "in"])

    return build


def layout_cases(full):
    cases = [Case(name, build) for name, build in SCENARIOS.items()]
    cases += [Case(f"hub-cache-{'escaping-' * e}{c}", hub_cached(c, e)) for e in (False, True) for c in COMMANDS]
    for name, layout in INPUT_LAYOUTS.items():
        for command in COMMANDS if full else COMMANDS[:2]:
            cases.append(_complete(package_case(f"layout-{name}-{FIXTURE}-{command}", FIXTURE, layout, command)))
    return cases


@fuzz_cases(layout_cases)
def test_layout(case, tmp_path):
    execute(case.build(tmp_path), tmp_path)
