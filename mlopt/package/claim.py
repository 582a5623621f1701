"""Putting a finished package in place atomically: claim a free name, or swap with the package `--force` replaces.

A check that OUT is free followed by a rename is a race: two runs both see OUT free and the second silently
replaces the first. The kernel does the check and the rename as one step instead:
- `claim(dir_fd, staging, out)`: rename that fails with FileExistsError if OUT exists: `renameat2(RENAME_NOREPLACE)`
  on Linux, `renameatx_np(RENAME_EXCL)` on macOS. Where neither works (old kernels, some network file systems),
  `mkdir(OUT)` claims the name exclusively and the rename then replaces that empty folder, failing if anything
  was put into it meanwhile.
- `swap(dir_fd, staging, out)`: exchange the two names in one step (`RENAME_EXCHANGE` / `RENAME_SWAP`): OUT is never
  missing, and the old package ends up under the staging name, for the caller to remove. The fallback is two
  renames (OUT aside under `aside`, staging into place), undone if the second fails.
"""

import ctypes
import errno
import os
import sys

RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2  # linux/fs.h
RENAME_SWAP, RENAME_EXCL = 0x2, 0x4  # macOS sys/stdio.h
_SYSCALL_RENAMEAT2 = {"x86_64": 316, "aarch64": 276, "arm64": 276, "riscv64": 276}
_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP}
_rename = None


def _kernel_rename():
    """A function (dir_fd, src, dst, flag) -> None raising OSError, or False if this system has none."""
    global _rename
    if _rename is None:
        _rename = False
        libc = ctypes.CDLL(None, use_errno=True)
        if sys.platform == "darwin" and hasattr(libc, "renameatx_np"):
            call, flags = libc.renameatx_np, {RENAME_NOREPLACE: RENAME_EXCL, RENAME_EXCHANGE: RENAME_SWAP}
            _rename = lambda fd, a, b, flag: _check(call(fd, os.fsencode(a), fd, os.fsencode(b), ctypes.c_uint(flags[flag])))  # noqa: E731
        elif sys.platform.startswith("linux"):
            if hasattr(libc, "renameat2"):
                call = libc.renameat2
                _rename = lambda fd, a, b, flag: _check(call(fd, os.fsencode(a), fd, os.fsencode(b), ctypes.c_uint(flag)))  # noqa: E731
            elif os.uname().machine in _SYSCALL_RENAMEAT2:
                number = _SYSCALL_RENAMEAT2[os.uname().machine]
                _rename = lambda fd, a, b, flag: _check(  # noqa: E731
                    libc.syscall(ctypes.c_long(number), fd, os.fsencode(a), fd, os.fsencode(b), ctypes.c_uint(flag))
                )
    return _rename


def _check(result):
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def claim(dir_fd, staging, out):
    """Rename folder `staging` to `out` (both in `dir_fd`) unless `out` exists: then FileExistsError."""
    rename = _kernel_rename()
    if rename:
        try:
            rename(dir_fd, staging, out, RENAME_NOREPLACE)
            return
        except OSError as e:
            if e.errno == errno.EEXIST:
                raise FileExistsError(errno.EEXIST, "exists", out) from None
            if e.errno not in _UNSUPPORTED:
                raise
    os.mkdir(out, 0o700, dir_fd=dir_fd)  # FileExistsError if taken: the exclusive claim
    try:
        os.rename(staging, out, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)  # replaces only an empty folder
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise FileExistsError(errno.EEXIST, "exists", out) from None  # someone filled it: it is theirs now
        os.rmdir(out, dir_fd=dir_fd)
        raise


def swap(dir_fd, staging, out, aside):
    """Put folder `staging` in place of the existing `out`; return the name the old `out` now has."""
    rename = _kernel_rename()
    if rename:
        try:
            rename(dir_fd, staging, out, RENAME_EXCHANGE)
            return staging
        except OSError as e:
            if e.errno not in _UNSUPPORTED:
                raise
    os.rename(out, aside, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    try:
        os.rename(staging, out, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        os.rename(aside, out, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        raise
    return aside
