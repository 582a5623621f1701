"""Copying package files at the cost of the file system, not of Python.

Tried in order: a hard link (only with `--link`), a copy-on-write clone (`clonefile` on APFS), the kernel's
`copy_file_range` (Linux: a reflink on btrfs/XFS, a server-side copy on NFS, an in-kernel copy elsewhere), and
`shutil.copyfile` (sendfile/fcopyfile, streamed). No path reads a file into Python memory. Each call returns the
method it used, so the report can say how the weights were copied.
"""

import ctypes
import ctypes.util
import errno
import os
import shutil
import sys

HARD_LINK, CLONE, COPY_FILE_RANGE, STREAMED = "hard link", "clonefile", "copy_file_range", "streamed copy"
_FALLBACK_ERRORS = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM, errno.EBADF}
_clonefile = None


CHUNK = 256 << 20  # copy_file_range calls are this large, so a cancelled copy stops within one chunk


class Cancelled(Exception):
    pass


def copy_file(src, dst, link=False, cancelled=lambda: False):
    """Copy `src` to the new file `dst`; return the method used. `cancelled()` is polled between chunks."""
    if link:
        os.link(src, dst)
        return HARD_LINK
    if sys.platform == "darwin" and _clone(src, dst):
        return CLONE
    if hasattr(os, "copy_file_range") and _copy_file_range(src, dst, cancelled):
        return COPY_FILE_RANGE
    shutil.copyfile(src, dst)
    return STREAMED


def _clone(src, dst):
    global _clonefile
    if _clonefile is None:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        _clonefile = getattr(libc, "clonefile", False)
    return bool(_clonefile) and _clonefile(os.fsencode(src), os.fsencode(dst), 0) == 0


def _copy_file_range(src, dst, cancelled):
    with open(src, "rb") as fsrc, open(dst, "wb") as fdst:
        remaining = os.fstat(fsrc.fileno()).st_size
        try:
            while remaining > 0:
                if cancelled():
                    raise Cancelled(src)
                copied = os.copy_file_range(fsrc.fileno(), fdst.fileno(), min(remaining, CHUNK))
                if copied == 0:
                    break
                remaining -= copied
        except OSError as e:
            if e.errno in _FALLBACK_ERRORS and os.fstat(fdst.fileno()).st_size == 0:
                fdst.close()
                os.remove(dst)
                return False
            raise
    if remaining:
        raise OSError(errno.EIO, f"copy_file_range stopped {remaining} bytes short copying {src}")
    return True
