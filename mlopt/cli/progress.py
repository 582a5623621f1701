"""Batch progress on stderr: what a person at a terminal or a CI log wants to see while models are optimized."""

import os
import sys

from ..report import printable


def progress_reporter(total, stream=None, quiet=False):
    """A tqdm bar on a terminal; one line per model otherwise (CI logs); nothing with `quiet`. Writes to stderr by
    default."""
    stream = stream or sys.stderr
    if quiet:  # errors only: a model that is bad input or failed still gets its one line

        def errors_only(item):
            if item.status in ("bad input", "failed"):
                print(printable(f"mlopt: error: {item.error}"), file=stream, flush=True)

        errors_only.close = lambda: None
        return errors_only
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
        detail = f"{item.rewrites} rewritten, {item.left_alone} left alone" if item.error is None else item.error
        print(printable(f"[{done[0]}/{total}] {item.input}: {item.status} ({detail}, {item.seconds:.2f}s)"), file=stream, flush=True)

    line.close = lambda: None
    return line
