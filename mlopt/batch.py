"""Batch post-processing: optimize many packages into an output folder, in worker processes.

Inputs are packages or folders; a folder is searched recursively for packages and its layout is mirrored under
the output folder. Each model is optimized independently: one bad model is reported with its one-line error and
the others go on. Every output is written atomically (package/writer.py), so an interrupted batch (Ctrl-C) leaves
finished packages and no partial ones.
"""

import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass

from .errors import BadInputError
from .package.manifest import MANIFEST


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
    interrupted: bool = False  # Ctrl-C stopped the batch (even if every model had finished by then)

    @property
    def exit_code(self):
        statuses = {i.status for i in self.items}
        if self.interrupted:
            return 130
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
    """Packages under `root`, recursively, in sorted order; a package's own folders are not searched."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        if folder != root and (folder.endswith(".mlpackage") or MANIFEST in files):
            found.append(folder)
            dirs[:] = []
    return found


def plan(inputs, out_dir):
    """One BatchItem per model: packages named directly go to out_dir/<name>, packages found in a folder keep
    their path relative to it. Paths that are neither become items that fail with the reason."""
    items = []
    for path in inputs:
        path = os.fspath(path)
        if os.path.isdir(path) and not os.path.isfile(os.path.join(path, MANIFEST)) and not path.endswith(".mlpackage"):
            packages = find_packages(path)
            if not packages:
                items.append(BatchItem(path, status="bad input", error=f"{path}: no .mlpackage found in this folder"))
            items += [BatchItem(p, os.path.join(out_dir, os.path.relpath(p, path))) for p in packages]
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
    """Worker: optimize one model; never raises for a bad model (Ctrl-C does raise). Returns (status, error, seconds,
    report dict)."""
    from .api import optimize_package

    start = time.perf_counter()
    try:
        report = optimize_package(input_path, output_path, **options)
        return "ok", None, time.perf_counter() - start, report.to_dict()
    except BadInputError as e:
        return "bad input", str(e), time.perf_counter() - start, None
    except Exception as e:  # noqa: BLE001 - reported per model, the batch goes on; Ctrl-C is no Exception: it stops
        return "failed", f"{input_path}: internal error: {type(e).__name__}: {e}", time.perf_counter() - start, None


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
            with ProcessPoolExecutor(max_workers=jobs) as pool:
                futures = {pool.submit(optimize_one, i.input, i.output, options): i for i in pending}
                try:
                    for future in as_completed(futures):
                        _finish(futures[future], future.result(), progress)
                except (KeyboardInterrupt, BrokenProcessPool):  # Ctrl-C reaches the workers too
                    pool.shutdown(wait=True, cancel_futures=True)
                    # work already handed to a worker may have finished meanwhile: report it as it ended
                    for future, item in futures.items():
                        if item.status == "pending" and future.done() and not future.cancelled() and future.exception() is None:
                            _finish(item, future.result(), None)
                    raise KeyboardInterrupt from None
    except KeyboardInterrupt:
        for item in pending:
            if item.status == "pending":
                item.status, item.error = "interrupted", "interrupted; nothing was written"
        _remove_staging(items)
        return BatchResult(items, interrupted=True)
    return BatchResult(items)


def _finish(item, outcome, progress):
    item.status, item.error, item.seconds, item.report = outcome
    if progress:
        progress(item)


def _remove_staging(items):
    """After an interrupt: remove temporary folders a killed worker could not clean up itself."""
    import shutil

    for parent in {os.path.dirname(os.path.abspath(i.output)) for i in items if i.output}:
        if os.path.isdir(parent):
            for name in os.listdir(parent):
                if ".mlopt-tmp-" in name:
                    shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


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
