"""Copying package files at the cost of the file system, not of Python, between file descriptors.

The source is an fd opened inside the input package (tree.py: no link followed, no special file); the target is
created here with `O_CREAT | O_EXCL | O_NOFOLLOW` in a staging folder this run created, so a copy can only ever
write a file it has just created itself. Tried in order: a hard link (only with `--link`; across file systems it
falls back to copying and says so), a copy-on-write clone (`fclonefileat` on APFS), the kernel's
`copy_file_range` (Linux: a reflink on btrfs/XFS, a server-side copy on NFS, an in-kernel copy elsewhere), and a
streamed copy (`sendfile`, else read/write). No path reads a whole file into Python memory. Every target is
fsync'ed before the package is renamed into place (as git and SQLite do): after a power loss a renamed package
never holds empty or partial files. Each call returns the method it used, so the report can say how the weights
were copied.
"""

import ctypes
import ctypes.util
import errno
import os
import stat
import sys

HARD_LINK, CLONE, COPY_FILE_RANGE, STREAMED = "hard link", "clonefile", "copy_file_range", "streamed copy"
LINK_FALLBACK = "hard link impossible here"
_FALLBACK_ERRORS = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM, errno.EBADF}
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
CHUNK = 256 << 20  # copy calls are at most this large, so a cancelled copy stops within one chunk
_fclonefileat = None


class Cancelled(Exception):
    pass


class ChangedWhileCopying(OSError):
    """The source entry was replaced between its check and the hard link."""


def create_file(dir_fd, name):
    """A new, empty file `name` in `dir_fd`, open for writing; FileExistsError if anything is there already."""
    return os.open(name, _CREATE, 0o666, dir_fd=dir_fd)


def copy_into(src_fd, dst_dir_fd, name, link_from=None, cancelled=lambda: False, made=None):
    """Copy the open regular file `src_fd` to the new file `name` in `dst_dir_fd`, flushed to disk; return the
    method used. With `link_from=(src_dir_fd, src_name)` a hard link is tried first. `made`, a list, receives the
    (st_dev, st_ino) of the file this call created with its own bytes (a copy or a clone, read from the descriptor
    it wrote; never a hard link): a private file of this run, which the package writer may later update in place."""
    fallback = ""
    if link_from is not None:
        try:
            _hard_link(src_fd, link_from, dst_dir_fd, name)
            return HARD_LINK
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            fallback = f" ({LINK_FALLBACK}: {e.strerror})"
    if sys.platform == "darwin" and _clone(src_fd, dst_dir_fd, name):
        _record(made, _fsync_new(dst_dir_fd, name))
        return CLONE + fallback
    dst_fd = create_file(dst_dir_fd, name)
    try:
        _record(made, os.fstat(dst_fd))
        size = os.fstat(src_fd).st_size
        method = COPY_FILE_RANGE if _copy_file_range(src_fd, dst_fd, size, cancelled) else _stream(src_fd, dst_fd, size, cancelled)
        if cancelled():
            raise Cancelled(name)
        os.fsync(dst_fd)
    finally:
        os.close(dst_fd)
    return method + fallback


def _hard_link(src_fd, link_from, dst_dir_fd, name):
    src_dir_fd, src_name = link_from
    os.link(src_name, name, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd, follow_symlinks=False)
    made, opened = os.stat(name, dir_fd=dst_dir_fd, follow_symlinks=False), os.fstat(src_fd)
    if not stat.S_ISREG(made.st_mode) or (made.st_dev, made.st_ino) != (opened.st_dev, opened.st_ino):
        os.unlink(name, dir_fd=dst_dir_fd)
        raise ChangedWhileCopying(errno.ESTALE, f"{src_name} changed while it was being linked")


def _clone(src_fd, dst_dir_fd, name):
    global _fclonefileat
    if _fclonefileat is None:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        _fclonefileat = getattr(libc, "fclonefileat", False)
    return bool(_fclonefileat) and _fclonefileat(src_fd, dst_dir_fd, os.fsencode(name), 0) == 0


def _fsync_new(dir_fd, name):
    """Flush the file just cloned to disk; returns its fstat."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
    try:
        os.fsync(fd)
        return os.fstat(fd)
    finally:
        os.close(fd)


def _record(made, st):
    if made is not None:
        made.append((st.st_dev, st.st_ino))


def _copy_file_range(src_fd, dst_fd, size, cancelled):
    """True once `size` bytes are copied; False (nothing written) where the kernel cannot do it."""
    if not hasattr(os, "copy_file_range"):
        return False
    done = 0
    while done < size:
        if cancelled():
            raise Cancelled()
        try:
            copied = os.copy_file_range(src_fd, dst_fd, min(size - done, CHUNK), done, done)
        except OSError as e:
            if e.errno in _FALLBACK_ERRORS and done == 0:
                return False
            raise
        if copied == 0:
            raise OSError(errno.EIO, f"the source ended {size - done} bytes early (it shrank while being copied)")
        done += copied
    return True


def _stream(src_fd, dst_fd, size, cancelled):
    done = 0
    while done < size:
        if cancelled():
            raise Cancelled()
        n = min(size - done, CHUNK if hasattr(os, "sendfile") else 1 << 20)
        if hasattr(os, "sendfile") and sys.platform.startswith("linux"):
            os.lseek(dst_fd, done, os.SEEK_SET)
            copied = os.sendfile(dst_fd, src_fd, done, n)
        else:
            data = os.pread(src_fd, n, done)
            copied = os.pwrite(dst_fd, data, done) if data else 0
        if copied == 0:
            raise OSError(errno.EIO, f"the source ended {size - done} bytes early (it shrank while being copied)")
        done += copied
    return STREAMED
