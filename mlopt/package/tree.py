"""Reading inside a package folder without ever leaving it.

A package is a folder the user names; everything in it is reached from that folder's file descriptor, one path
component at a time, with `O_NOFOLLOW`: a symbolic link anywhere inside the package (a `Data/` linked elsewhere,
a `weight.bin -> /etc/passwd`, a Hugging Face cache snapshot whose files link to its blob store) is refused
before anything is read through it, so nothing outside the package is ever read, and a copy can never write
through a link either. Special files (FIFOs, sockets, devices) are refused from `lstat` alone and never opened:
opening a FIFO blocks forever. Files are opened `O_NONBLOCK` and re-checked with `fstat`, so an entry swapped
for something else between the check and the open is refused too.

Only the package folder itself may be reached through a symlink: the user named it.
"""

import os
import stat
from dataclasses import dataclass

from ..errors import BadInputError

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | os.O_NONBLOCK | _CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC
_KINDS = [
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
]
FILE, FOLDER = "file", "folder"
LFS_POINTER = b"version https://git-lfs"  # what a clone without git-lfs leaves where a large file should be


def refuse_lfs_pointer(data, path, what, error=BadInputError):
    """`error` if `data` (the start of a file) is a Git LFS pointer instead of `what` ("the model", ...)."""
    if data.startswith(LFS_POINTER):
        raise error(path, f"is a Git LFS pointer, not {what}; run `git lfs pull` in its repository")


@dataclass(frozen=True)
class Entry:
    rel: str  # path relative to the package folder, "/"-separated
    kind: str  # FILE or FOLDER
    size: int = 0
    identity: tuple = None  # (st_dev, st_ino): where OUT may not be, whatever path leads there


def special_kind(mode):
    """'a FIFO', 'a socket', ... for a special file's st_mode; None for regular files, folders and links."""
    return next((name for test, name in _KINDS if test(mode)), None)


def split_relative(rel, owner, what, base=()):
    """The components of the in-package path `rel`, taken relative to the folder `base` (components), or
    BadInputError(owner, ...) if it could leave the package.

    Lexical: '..' may not climb above the package; absolute paths and NUL or control characters are refused.
    `what` describes the path in messages, e.g. "root model path 'x'"."""
    if not isinstance(rel, str) or not rel:
        raise BadInputError(owner, f"{what} is not a path")
    if any(ord(c) < 32 for c in rel):
        raise BadInputError(owner, f"{what} contains a control character")
    if rel.startswith("/") or os.path.isabs(rel):
        raise BadInputError(owner, f"{what} is an absolute path; it must stay inside the package")
    parts = list(base)
    for part in rel.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise BadInputError(owner, f"{what} points outside the package")
            parts.pop()
        else:
            parts.append(part)
    if not parts:
        raise BadInputError(owner, f"{what} names the package folder itself, not a file")
    return parts


class PackageTree:
    """An open package folder. `scan()` lists it, `open_file(rel)` opens a regular file inside it."""

    def __init__(self, path):
        self.path = os.fspath(path)
        try:
            self.fd = os.open(self.path, _DIR_FLAGS)
        except FileNotFoundError:
            raise BadInputError(self.path, "no such file or directory") from None
        except NotADirectoryError:
            raise BadInputError(self.path, "not an .mlpackage (not a folder)") from None
        except OSError as e:
            raise BadInputError(self.path, f"cannot be read ({e.strerror})") from None
        st = os.fstat(self.fd)
        self.identity = (st.st_dev, st.st_ino)

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def show(self, rel):
        """The path to show a user for `rel`: under the package path as the user gave it."""
        return os.path.join(self.path, *rel.split("/")) if rel else self.path

    # -- checks ---------------------------------------------------------------------------------------------
    def _refuse(self, rel, st, dir_fd, name):
        """BadInputError for an entry that is neither a regular file nor a folder."""
        if stat.S_ISLNK(st.st_mode):
            try:
                target = os.readlink(name, dir_fd=dir_fd)
            except OSError:
                target = "?"
            raise BadInputError(
                self.show(rel),
                f"is a symbolic link (to {target}); mlopt follows no link inside a package, so nothing outside it "
                "is read (resolve links first, e.g. cp -RL)",
            )
        raise BadInputError(self.show(rel), f"is {special_kind(st.st_mode) or 'not a regular file'}, not a regular file; mlopt never opens special files")

    def _lstat(self, dir_fd, name, rel):
        try:
            return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            raise BadInputError(self.show(rel), "no such file") from None
        except OSError as e:
            raise BadInputError(self.show(rel), f"cannot be read ({e.strerror})") from None

    # -- opening --------------------------------------------------------------------------------------------
    def open_folder(self, parts):
        """A new fd of the folder `parts` below the package, every component checked not to be a link."""
        fd = os.dup(self.fd)
        try:
            for k, name in enumerate(parts):
                rel = "/".join(parts[: k + 1])
                st = self._lstat(fd, name, rel)
                if not stat.S_ISDIR(st.st_mode):
                    if stat.S_ISREG(st.st_mode):
                        raise BadInputError(self.show(rel), "is a file, not a folder")
                    self._refuse(rel, st, fd, name)
                try:
                    inner = os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
                except OSError as e:
                    raise BadInputError(self.show(rel), f"cannot be read ({e.strerror})") from None
                os.close(fd)
                fd = inner
            return fd
        except BaseException:
            os.close(fd)
            raise

    def open_file(self, rel, what="file"):
        """An fd open for reading on the regular file `rel` ("a/b/c") inside the package."""
        parts = rel.split("/")
        folder = self.open_folder(parts[:-1])
        try:
            st = self._lstat(folder, parts[-1], rel)
            if stat.S_ISDIR(st.st_mode):
                raise BadInputError(self.show(rel), f"is a folder, not a {what}")
            if not stat.S_ISREG(st.st_mode):
                self._refuse(rel, st, folder, parts[-1])
            try:
                fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=folder)
            except OSError as e:
                raise BadInputError(self.show(rel), f"cannot be read ({e.strerror})") from None
        finally:
            os.close(folder)
        now = os.fstat(fd)
        if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            os.close(fd)
            raise BadInputError(self.show(rel), "changed while mlopt was reading it")
        return fd

    def read_bytes(self, rel, limit=None, what="file"):
        """The whole file `rel`; BadInputError if it is larger than `limit` bytes."""
        fd = self.open_file(rel, what)
        try:
            size = os.fstat(fd).st_size
            if limit is not None and size > limit:
                raise BadInputError(self.show(rel), f"is {size} bytes; more than the {limit} a {what} may have")
            chunks, remaining = [], size
            while remaining > 0:
                chunk = os.read(fd, min(remaining, 1 << 26))
                if not chunk:
                    break
                chunks.append(chunk)
                remaining -= len(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def is_file(self, rel):
        """True if `rel` is a regular file inside the package (no link followed, nothing opened)."""
        parts = rel.split("/")
        try:
            folder = self.open_folder(parts[:-1])
        except BadInputError:
            return False
        try:
            return stat.S_ISREG(os.stat(parts[-1], dir_fd=folder, follow_symlinks=False).st_mode)
        except OSError:
            return False
        finally:
            os.close(folder)

    # -- listing --------------------------------------------------------------------------------------------
    def scan(self):
        """Every folder and regular file of the package, folders before their contents, in sorted order.

        Refuses (BadInputError naming the entry) any symbolic link and any special file: the output must be an
        exact copy, and a link would either leave the package or be silently turned into a file."""
        entries = []
        stack = [("", os.dup(self.fd))]
        try:
            while stack:
                prefix, fd = stack.pop()
                try:
                    with os.scandir(fd) as listing:
                        names = sorted(e.name for e in listing)
                    subfolders = []
                    for name in names:
                        rel = f"{prefix}{name}"
                        st = self._lstat(fd, name, rel)
                        if stat.S_ISDIR(st.st_mode):
                            entries.append(Entry(rel, FOLDER, identity=(st.st_dev, st.st_ino)))
                            subfolders.append((rel, name))
                        elif stat.S_ISREG(st.st_mode):
                            entries.append(Entry(rel, FILE, st.st_size))
                        else:
                            self._refuse(rel, st, fd, name)
                    for rel, name in reversed(subfolders):
                        try:
                            stack.append((rel + "/", os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)))
                        except OSError as e:
                            raise BadInputError(self.show(rel), f"cannot be read ({e.strerror})") from None
                except OSError as e:
                    raise BadInputError(self.show(prefix.rstrip("/")), f"cannot be listed ({e.strerror})") from None
                finally:
                    os.close(fd)
        finally:
            for _, fd in stack:
                os.close(fd)
        return _folders_first(entries)


def _folders_first(entries):
    """Sorted by path, so a folder comes before anything inside it."""
    return sorted(entries, key=lambda e: e.rel.split("/"))
