"""One BLAS thread for the `mlopt` command, unless the user chose a number.

mlopt's arithmetic (the proofs, the self-check, `verify`) is matrix products of a few rows of activations - the
inputs it builds have a short sequence - by weight blocks of at most 2^20 elements (numerics/streamed.py).
numpy's BLAS (OpenBLAS in the Linux and x86 wheels) splits such a product over every core for little gain, and
its threads wait for each other spinning: next to `optimize`'s copy thread, in a batch's worker processes, or on
a machine whose cores other programs keep busy, a thread that is not running stalls every product.
bench/bench_large.py times `mlopt optimize` both ways (docs/coverage.md quotes it).

The thread count is read by the BLAS library once, when numpy is first imported, so it is set here, before the
command imports numpy (the copy starts first; numpy comes with the analysis). Only in the command's own
process and only where the environment names no thread count: OPENBLAS_NUM_THREADS, MKL_NUM_THREADS,
VECLIB_MAXIMUM_THREADS (Accelerate, the macOS arm64 wheels) or OMP_NUM_THREADS set by the user are left as they
are - `OPENBLAS_NUM_THREADS=4 mlopt ...` gives four. Python code calling mlopt keeps its own settings.
"""

import os
import sys

SET = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")  # what this sets to 1
CHOSEN = SET + ("OMP_NUM_THREADS",)  # any of these set by the user: nothing is changed


def limit():
    """Set the BLAS thread counts to 1, if numpy is not imported yet and the user set none; True if it did."""
    if "numpy" in sys.modules or any(name in os.environ for name in CHOSEN):
        return False
    for name in SET:
        os.environ[name] = "1"
    return True
