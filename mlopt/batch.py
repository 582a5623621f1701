"""Batch post-processing: optimize many packages into an output folder, in worker processes.

Inputs are packages or folders; a folder is searched recursively for packages and its layout is mirrored under
the output folder. Each model is optimized independently: one bad model is reported with its one-line error and
the others go on. Every output is written atomically (package/writer.py), so an interrupted batch (Ctrl-C,
SIGTERM, SIGHUP) leaves finished packages and no partial ones: a worker interrupted inside a model aborts that
model's writer itself and reports it "interrupted"; an idle worker ignores the signal and the pool is shut down.
A signal only the parent receives (`kill PID`) is passed on to the workers. Folders are searched without following
symbolic links; a link found there is listed as skipped (name it directly to optimize what it points to).
"""

import multiprocessing
import os
import signal as signal_module
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass

from . import signals
from .api import optimize_package
from .errors import BadInputError, MloptError
from .package import writer
from .package.destination import ancestors, deepest_existing
from .package.manifest import MANIFEST
from .package.writer import abort_all
from .report import SCHEMA, lines_text

_in_task = [0]  # in a worker process, during a model: the commit count at which its package is in place (0: idle)
_stopping = [False]  # in a worker process: a signal came; models handed over later are not started


STATUSES = ("rewritten", "unchanged", "skipped", "bad input", "failed", "interrupted")


@dataclass
class BatchItem:
    input: str
    output: str = None
    status: str = "pending"  # rewritten, unchanged, skipped, bad input, failed, interrupted
    error: str = None
    seconds: float = 0.0
    report: dict = None  # Report.to_dict() of a successful run

    @property
    def rewrites(self):
        return self.report["rewrites"] if self.report else 0

    @property
    def left_alone(self):
        return self.report["left_alone"] if self.report else 0


@dataclass
class BatchResult:
    items: list
    interrupted: bool = False  # a signal stopped the batch (even if every model had finished by then)
    signal_exit: int = 130  # the exit code for that signal (128 + its number)
    dry_run: bool = False  # statuses say what a real run would do; nothing was written

    @property
    def exit_code(self):
        statuses = {i.status for i in self.items}
        if self.interrupted:
            return self.signal_exit
        if "failed" in statuses:
            return 1
        return 2 if "bad input" in statuses else 0

    def counts(self):
        """How many models ended in each status, every status listed."""
        return {status: sum(i.status == status for i in self.items) for status in STATUSES}

    def render(self, verbose=False):
        rows = [("model", "rewritten", "left alone", "time", "status")]
        for i in self.items:
            status = i.status if i.error is None else f"{i.status}: {i.error}"
            rows.append((i.input, str(i.rewrites), str(i.left_alone), f"{i.seconds:.2f}s", status))
        widths = [max(len(r[k]) for r in rows) for k in range(4)]
        lines = ["  ".join(r[k].ljust(widths[k]) for k in range(4)) + "  " + r[4] for r in rows]
        counts = ", ".join(f"{n} {status}" for status, n in self.counts().items() if n or status in ("rewritten", "unchanged"))
        chains = sum(i.rewrites for i in self.items)
        dry = " (dry run: nothing written)" if self.dry_run else ""
        lines.append(f"{len(self.items)} model{'s' * (len(self.items) != 1)}: {counts}; {chains} chain{'s' * (chains != 1)} rewritten{dry}")
        changed = [i.input for i in self.items if i.report and i.report.get("interface_changed")]
        if changed:  # --split-outputs: these return other outputs than their inputs (each model's report says which)
            lines.append(f"interface changed (--split-outputs; --json says how to reassemble): {', '.join(changed)}")
        return lines_text(lines)

    def to_dict(self):
        return {
            "schema": SCHEMA,
            "command": "optimize --out-dir",
            "models": [asdict(i) for i in self.items],
            "counts": self.counts(),
            "rewrites": sum(i.rewrites for i in self.items),
            "interrupted": self.interrupted,
            "dry_run": self.dry_run,
        }


def find_packages(root, exclude=None):
    """(packages, links) under `root`, recursively, in sorted order; a package's own folders are not searched and
    no symbolic link is followed: links to folders are returned apart, to be reported as skipped. The folder
    `exclude` (the output folder, when it lies inside an input folder) is not searched: a rerun must not take
    the last run's outputs for inputs."""
    found, links = [], []
    excluded = _identity(exclude)
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        dirs[:] = [d for d in dirs if excluded is None or _identity(os.path.join(folder, d)) != excluded]
        if folder != root and (folder.endswith(".mlpackage") or MANIFEST in files):
            found.append(folder)
            dirs[:] = []
            continue
        for name in list(dirs):
            if os.path.islink(os.path.join(folder, name)):
                links.append(os.path.join(folder, name))
                dirs.remove(name)
    return found, links


def _identity(path):
    try:
        st = os.stat(path)
    except (OSError, TypeError):
        return None
    return (st.st_dev, st.st_ino)


def plan(inputs, out_dir, skip_existing=False):
    """One BatchItem per model: packages named directly go to out_dir/<name>, packages found in a folder keep
    their path relative to it. Paths that are neither become items that fail with the reason. With
    `skip_existing`, a model whose output exists is listed as skipped."""
    out_dir = os.fspath(out_dir)
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise BadInputError(out_dir, "--out-dir is not a folder")
    items = []
    for path in inputs:
        path = os.fspath(path)
        if os.path.isdir(path) and not os.path.isfile(os.path.join(path, MANIFEST)) and not path.endswith(".mlpackage"):
            packages, links = find_packages(path, exclude=out_dir)
            if not packages and not links:
                items.append(BatchItem(path, status="bad input", error=f"{path}: no .mlpackage found in this folder"))
            items += [BatchItem(p, os.path.join(out_dir, os.path.relpath(p, path))) for p in packages]
            items += [BatchItem(p, status="skipped", error=f"{p}: a symbolic link; folders are searched without following links") for p in links]
        else:
            items.append(BatchItem(path, os.path.join(out_dir, os.path.basename(os.path.normpath(path)))))
    seen = {}
    for item in items:
        if item.output is None:
            continue
        key = os.path.abspath(item.output)
        if key in seen:
            item.status, item.error = "bad input", f"{item.input}: output {item.output} would also be written by {seen[key]}"
        seen.setdefault(key, item.input)
        if skip_existing and item.status == "pending" and os.path.lexists(item.output):
            item.status, item.error = "skipped", f"{item.output} exists (--skip-existing)"
    _refuse_out_dir_inside_an_input(out_dir, items)
    return items


def _refuse_out_dir_inside_an_input(out_dir, items):
    """Every output would land inside that input package: refuse the batch before anything is written."""
    above = set(ancestors(deepest_existing(os.path.abspath(out_dir))))
    for item in items:
        if item.output is not None and _identity(item.input) in above:
            raise BadInputError(out_dir, f"--out-dir is inside the input package {item.input}; write the outputs outside it")


NOT_STARTED = "the batch stopped before this model started; nothing was written"
CUT_SHORT = "stopped while being optimized; nothing was written"


def optimize_one(input_path, output_path, options):
    """Worker: optimize one model; never raises for a bad model, nor for a signal that interrupts it in a worker
    process. Returns (status, error, seconds, report dict)."""
    start = time.perf_counter()
    if _stopping[0]:
        return "interrupted", NOT_STARTED, 0.0, None
    _in_task[0] = writer.COMMITS[0] + 1  # interruptible until this task's package is in place
    try:
        report = optimize_package(input_path, output_path, **options)
        status = "rewritten" if report.rewrites else "unchanged"  # in a dry run: what a real run would do
        return status, None, time.perf_counter() - start, report.to_dict()
    except BadInputError as e:  # batches run from the command line: its wording (--force)
        return "bad input", e.cli_text, time.perf_counter() - start, None
    except MloptError as e:
        return "failed", e.cli_text, time.perf_counter() - start, None
    except KeyboardInterrupt:
        abort_all()  # a signal may have cut a writer's own cleanup short
        if not _is_worker():
            raise  # in the main process an interrupt stops the batch
        return "interrupted", CUT_SHORT, time.perf_counter() - start, None
    except Exception as e:  # noqa: BLE001 - reported per model, the batch goes on
        return "failed", f"{input_path}: internal error: {type(e).__name__}: {e}", time.perf_counter() - start, None
    finally:
        _in_task[0] = 0


def _is_worker():
    return multiprocessing.parent_process() is not None


def _worker_init():
    """Worker processes: a signal interrupts the model being optimized (its writer cleans up), and is ignored
    between models, where the parent is shutting the pool down anyway."""

    def handler(signum, frame):
        _stopping[0] = True
        if _in_task[0] and writer.COMMITS[0] < _in_task[0]:
            _in_task[0] = 0  # once: the cleanup that follows runs uninterrupted
            raise signals.Interrupted(signum)

    signals.install(handler)


def run(items, jobs=1, progress=None, **options):
    """Optimize every pending item (in `jobs` worker processes); `progress(item)` is called as each finishes."""
    pending = [i for i in items if i.status == "pending"]
    for item in items:
        if item.status != "pending" and progress:
            progress(item)
    current = None  # the model being optimized in this process (jobs 1), if any
    try:
        if jobs <= 1:
            for current in pending:
                _finish(current, optimize_one(current.input, current.output, options), progress)
            current = None
        else:
            _run_pool(pending, jobs, progress, options)
    except KeyboardInterrupt as e:
        abort_all()
        for item in pending:
            if item.status == "pending":
                item.status, item.error = "interrupted", CUT_SHORT if item is current else NOT_STARTED
        return BatchResult(items, interrupted=True, signal_exit=signals.exit_code(e), dry_run=options.get("dry_run", False))
    return BatchResult(items, dry_run=options.get("dry_run", False))


MAX_WORKERS_PER_CPU = 8


def _run_pool(pending, jobs, progress, options):
    """Workers: never more than models, nor than MAX_WORKERS_PER_CPU per CPU (`--jobs 100000` must not fork
    100000 processes). A worker that dies (killed by the OS) fails the models it had; a failed fork ends the batch
    with one line; the pool is always shut down, so nothing is left running."""
    workers = max(1, min(jobs, len(pending), MAX_WORKERS_PER_CPU * (os.cpu_count() or 1)))
    pool = ProcessPoolExecutor(max_workers=workers, initializer=_worker_init)
    futures = {}
    try:
        with signals.held():  # submitting forks the workers: one forked but not yet recorded would be left running
            futures = {pool.submit(optimize_one, i.input, i.output, options): i for i in pending}
        for future in as_completed(futures):
            _finish(futures[future], future.result(), progress)
    except (KeyboardInterrupt, BrokenProcessPool, OSError) as e:
        _signal_workers(pool, getattr(e, "signum", None))
        pool.shutdown(wait=True, cancel_futures=True)
        # work already handed to a worker may have finished (or been interrupted) meanwhile: report it as it ended
        for future, item in futures.items():
            if item.status == "pending" and future.done() and not future.cancelled() and future.exception() is None:
                _finish(item, future.result(), None)
        if isinstance(e, KeyboardInterrupt):
            raise
        if isinstance(e, BrokenProcessPool):
            for item in pending:
                if item.status == "pending":
                    _finish(item, ("failed", f"{item.input}: a worker process died (killed by the system?); not written", 0.0, None), progress)
            return
        raise MloptError(f"--jobs {jobs}", f"could not start {workers} worker processes ({e.strerror or e}); use a smaller --jobs") from None
    pool.shutdown(wait=True)


def _signal_workers(pool, signum):
    """Pass a signal only the parent got (`kill PID`) on to the workers, so they abort their models too.
    A Ctrl-C reached them already; a second one is ignored by their handler."""
    for process in list(getattr(pool, "_processes", {}).values()):
        try:
            os.kill(process.pid, signum or signal_module.SIGTERM)
        except (OSError, AttributeError):
            pass


def _finish(item, outcome, progress):
    item.status, item.error, item.seconds, item.report = outcome
    if progress:
        progress(item)
