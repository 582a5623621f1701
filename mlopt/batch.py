"""Batch post-processing: optimize many packages into an output folder, in worker processes.

Inputs are packages or folders; a folder is searched recursively for packages and its layout is mirrored under
the output folder. Each model is optimized independently: one bad model is reported with its one-line error and
the others go on. Every output is written atomically (package/writer.py), so an interrupted batch (Ctrl-C,
SIGTERM, SIGHUP) leaves finished packages and no partial ones: a worker interrupted inside a model aborts that
model's writer itself and reports it "interrupted"; an idle worker ignores the signal and the pool is shut down.
A signal only the parent receives (`kill PID`) is passed on to the workers. Folders are searched without following
symbolic links; a link found there is listed as skipped (name it directly to optimize what it points to).
"""

import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass

from .errors import BadInputError, MloptError
from .package.manifest import MANIFEST

_in_task = [0]  # in a worker process, during a model: the commit count at which its package is in place (0: idle)
_stopping = [False]  # in a worker process: a signal came; models handed over later are not started


@dataclass
class BatchItem:
    input: str
    output: str = None
    status: str = "pending"  # ok, bad input, failed, interrupted
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

    @property
    def exit_code(self):
        statuses = {i.status for i in self.items}
        if self.interrupted:
            return self.signal_exit
        if "failed" in statuses:
            return 1
        return 2 if "bad input" in statuses else 0

    def render(self):
        rows = [("model", "rewritten", "left alone", "time", "status")]
        for i in self.items:
            status = i.status if i.error is None else f"{i.status}: {i.error}"
            rows.append((i.input, str(i.rewrites), str(i.left_alone), f"{i.seconds:.2f}s", status))
        widths = [max(len(r[k]) for r in rows) for k in range(4)]
        lines = ["  ".join(r[k].ljust(widths[k]) for k in range(4)) + "  " + r[4] for r in rows]
        ok = sum(i.status == "ok" for i in self.items)
        lines.append(f"{ok}/{len(self.items)} models optimized, {sum(i.rewrites for i in self.items)} chains rewritten")
        return "\n".join(lines)

    def to_dict(self):
        return {
            "models": [asdict(i) for i in self.items],
            "ok": sum(i.status == "ok" for i in self.items),
            "failed": sum(i.status != "ok" for i in self.items),
            "interrupted": self.interrupted,
        }


def find_packages(root):
    """(packages, links) under `root`, recursively, in sorted order; a package's own folders are not searched and
    no symbolic link is followed: links to folders are returned apart, to be reported as skipped."""
    found, links = [], []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        if folder != root and (folder.endswith(".mlpackage") or MANIFEST in files):
            found.append(folder)
            dirs[:] = []
            continue
        for name in list(dirs):
            if os.path.islink(os.path.join(folder, name)):
                links.append(os.path.join(folder, name))
                dirs.remove(name)
    return found, links


def plan(inputs, out_dir):
    """One BatchItem per model: packages named directly go to out_dir/<name>, packages found in a folder keep
    their path relative to it. Paths that are neither become items that fail with the reason."""
    out_dir = os.fspath(out_dir)
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise BadInputError(out_dir, "--out-dir is not a folder")
    items = []
    for path in inputs:
        path = os.fspath(path)
        if os.path.isdir(path) and not os.path.isfile(os.path.join(path, MANIFEST)) and not path.endswith(".mlpackage"):
            packages, links = find_packages(path)
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
    return items


def optimize_one(input_path, output_path, options):
    """Worker: optimize one model; never raises for a bad model, nor for a signal that interrupts it in a worker
    process. Returns (status, error, seconds, report dict)."""
    from .api import optimize_package

    from .package import writer

    start = time.perf_counter()
    if _stopping[0]:
        return "interrupted", "interrupted; nothing was written", 0.0, None
    _in_task[0] = writer.COMMITS[0] + 1  # interruptible until this task's package is in place
    try:
        report = optimize_package(input_path, output_path, **options)
        return "ok", None, time.perf_counter() - start, report.to_dict()
    except BadInputError as e:
        return "bad input", str(e), time.perf_counter() - start, None
    except MloptError as e:
        return "failed", str(e), time.perf_counter() - start, None
    except KeyboardInterrupt:
        from .package.writer import abort_all

        abort_all()  # a signal may have cut a writer's own cleanup short
        if not _is_worker():
            raise  # in the main process an interrupt stops the batch
        return "interrupted", "interrupted; nothing was written", time.perf_counter() - start, None
    except Exception as e:  # noqa: BLE001 - reported per model, the batch goes on
        return "failed", f"{input_path}: internal error: {type(e).__name__}: {e}", time.perf_counter() - start, None
    finally:
        _in_task[0] = 0


def _is_worker():
    import multiprocessing

    return multiprocessing.parent_process() is not None


def _worker_init():
    """Worker processes: a signal interrupts the model being optimized (its writer cleans up), and is ignored
    between models, where the parent is shutting the pool down anyway."""
    from .cli import signals

    from .package import writer

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
    try:
        if jobs <= 1:
            for item in pending:
                _finish(item, optimize_one(item.input, item.output, options), progress)
        else:
            _run_pool(pending, jobs, progress, options)
    except KeyboardInterrupt as e:
        from .cli import signals
        from .package.writer import abort_all

        abort_all()

        for item in pending:
            if item.status == "pending":
                item.status, item.error = "interrupted", "interrupted; nothing was written"
        return BatchResult(items, interrupted=True, signal_exit=signals.exit_code(e))
    return BatchResult(items)


def _run_pool(pending, jobs, progress, options):
    pool = ProcessPoolExecutor(max_workers=jobs, initializer=_worker_init)
    futures = {}
    try:
        futures = {pool.submit(optimize_one, i.input, i.output, options): i for i in pending}
        for future in as_completed(futures):
            _finish(futures[future], future.result(), progress)
    except (KeyboardInterrupt, BrokenProcessPool) as e:
        _signal_workers(pool, getattr(e, "signum", None))
        pool.shutdown(wait=True, cancel_futures=True)
        # work already handed to a worker may have finished (or been interrupted) meanwhile: report it as it ended
        for future, item in futures.items():
            if item.status == "pending" and future.done() and not future.cancelled() and future.exception() is None:
                _finish(item, future.result(), None)
        if isinstance(e, KeyboardInterrupt):
            raise
        raise KeyboardInterrupt from None
    pool.shutdown(wait=True)


def _signal_workers(pool, signum):
    """Pass a signal only the parent got (`kill PID`) on to the workers, so they abort their models too.
    A Ctrl-C reached them already; a second one is ignored by their handler."""
    import signal as signal_module

    for process in list(getattr(pool, "_processes", {}).values()):
        try:
            os.kill(process.pid, signum or signal_module.SIGTERM)
        except (OSError, AttributeError):
            pass


def _finish(item, outcome, progress):
    item.status, item.error, item.seconds, item.report = outcome
    if progress:
        progress(item)


def progress_reporter(total, stream=None):
    """A tqdm bar on a terminal; one line per model otherwise (CI logs). Writes to stderr by default."""
    stream = stream or sys.stderr
    if stream.isatty():
        from tqdm import tqdm

        bar = tqdm(total=total, file=stream, unit="model")

        def update(item):
            bar.set_postfix_str(os.path.basename(item.input))
            bar.update(1)

        update.close = bar.close
        return update
    done = [0]

    def line(item):
        done[0] += 1
        detail = f"{item.rewrites} rewritten, {item.left_alone} left alone" if item.status == "ok" else item.error
        print(f"[{done[0]}/{total}] {item.input}: {item.status} ({detail}, {item.seconds:.2f}s)", file=stream, flush=True)

    line.close = lambda: None
    return line
