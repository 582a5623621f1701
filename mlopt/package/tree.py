"""Reading inside a package folder without ever leaving it.

A package is a folder the user names; everything in it is reached from that folder's file descriptor, one path
component at a time, with `O_NOFOLLOW`: a symbolic link inside the package (a `Data/` linked elsewhere, a
`weight.bin -> /etc/passwd`) is refused before anything is read through it, so nothing outside the package is
ever read, and a copy can never write through a link either. Special files (FIFOs, sockets, devices) are refused
from `lstat` alone and never opened: opening a FIFO blocks forever. Files are opened `O_NONBLOCK` and re-checked
with `fstat`, so an entry swapped for something else between the check and the open is refused too.

Only the package folder itself may be reached through a symlink: the user named it. The one exception inside:
a package in a Hugging Face hub cache snapshot, whose files are links into its repository's `blobs/` folder
(hub_cache.py). There a file link of exactly the form the cache writes is followed to its blob, which is opened
from that `blobs/` folder with the same checks; every other link is refused as everywhere else.
"""

import os
import stat
from dataclasses import dataclass

from ..errors import BadInputError
from .hub_cache import BlobStore

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
        self.blobs = BlobStore.around(self.path, self.fd)  # None unless the folder is in a hub cache snapshot

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.blobs is not None:
            self.blobs.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def show(self, rel):
        """The path to show a user for `rel`: under the package path as the user gave it."""
        return os.path.join(self.path, *rel.split("/")) if rel else self.path

    # -- checks ---------------------------------------------------------------------------------------------
    def _refuse(self, rel, st, dir_fd, name):
        """BadInputError for an entry that is neither a regular file nor a folder (nor a hub cache link)."""
        if stat.S_ISLNK(st.st_mode):
            target = _readlink(dir_fd, name)
            if self.blobs is not None:
                raise BadInputError(
                    self.show(rel),
                    f"is a symbolic link (to {target}) that does not lead to a file in its Hugging Face cache "
                    f"repository's {self.blobs.path}; mlopt follows links inside a package only there",
                )
            raise BadInputError(
                self.show(rel),
                f"is a symbolic link (to {target}); mlopt follows no link inside a package, so nothing outside it "
                "is read (resolve links first, e.g. cp -RL)",
            )
        raise BadInputError(self.show(rel), f"is {special_kind(st.st_mode) or 'not a regular file'}, not a regular file; mlopt never opens special files")

    def _follow(self, dir_fd, name, rel, st):
        """(folder fd, name, lstat) of what the entry `name` of `dir_fd` stands for: itself, or for a hub cache
        link its blob in `blobs/` (checked to be a regular file there). Any other link is returned as it is, for
        the caller to refuse."""
        if not stat.S_ISLNK(st.st_mode) or self.blobs is None:
            return dir_fd, name, st
        target = _readlink(dir_fd, name)
        blob = self.blobs.blob_name(target, rel.count("/"))
        if blob is None:
            return dir_fd, name, st
        shown = os.path.join(self.blobs.path, blob)
        try:
            found = os.stat(blob, dir_fd=self.blobs.fd, follow_symlinks=False)
        except FileNotFoundError:
            raise BadInputError(self.show(rel), f"is a symbolic link to {shown}, which does not exist (an unfinished download?)") from None
        except OSError as e:
            raise BadInputError(self.show(rel), f"is a symbolic link to {shown}, which cannot be read ({e.strerror})") from None
        if stat.S_ISREG(found.st_mode):
            return self.blobs.fd, blob, found
        if stat.S_ISLNK(found.st_mode):
            what = "itself a symbolic link; mlopt follows one link into blobs/ and no further"
        elif stat.S_ISDIR(found.st_mode):
            what = "a folder; mlopt follows links to files only"
        else:
            what = f"{special_kind(found.st_mode) or 'not a regular file'}; mlopt never opens special files"
        raise BadInputError(self.show(rel), f"is a symbolic link to {shown}, which is {what}")

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

    def _locate(self, rel, what):
        """(fd of rel's folder, to close; fd of the folder holding the file `rel` stands for; its name there; its
        lstat): `rel` itself, or its blob for a hub cache link. BadInputError unless that is a regular file."""
        parts = rel.split("/")
        folder = self.open_folder(parts[:-1])
        try:
            st = self._lstat(folder, parts[-1], rel)
            if stat.S_ISDIR(st.st_mode):
                raise BadInputError(self.show(rel), f"is a folder, not a {what}")
            dir_fd, name, found = self._follow(folder, parts[-1], rel, st)
            if not stat.S_ISREG(found.st_mode):
                self._refuse(rel, st, folder, parts[-1])
            return folder, dir_fd, name, found
        except BaseException:
            os.close(folder)
            raise

    def location(self, rel):
        """(folder fd, name) of the regular file `rel` stands for (its blob, for a hub cache link): where a hard
        link to it is made from. The caller closes the fd."""
        folder, dir_fd, name, _ = self._locate(rel, "file")
        if dir_fd == folder:
            return folder, name
        os.close(folder)
        return os.dup(dir_fd), name

    def open_file(self, rel, what="file"):
        """An fd open for reading on the regular file `rel` ("a/b/c") inside the package (for a hub cache link:
        on its blob)."""
        folder, dir_fd, name, st = self._locate(rel, what)
        try:
            try:
                fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
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
        """True if `rel` is a regular file inside the package, or a hub cache link to one (nothing opened)."""
        try:
            folder, _, _, _ = self._locate(rel, "file")
        except BadInputError:
            return False
        os.close(folder)
        return True

    # -- listing --------------------------------------------------------------------------------------------
    def scan(self):
        """Every folder and regular file of the package, folders before their contents, in sorted order.

        Refuses (BadInputError naming the entry) any symbolic link but a hub cache link (listed as the regular
        file it stands for) and any special file: a link could lead out of the package."""
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
                        found = self._follow(fd, name, rel, st)[2]  # a hub cache link: its blob
                        if stat.S_ISDIR(found.st_mode):
                            entries.append(Entry(rel, FOLDER, identity=(st.st_dev, st.st_ino)))
                            subfolders.append((rel, name))
                        elif stat.S_ISREG(found.st_mode):
                            entries.append(Entry(rel, FILE, found.st_size))
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


def _readlink(dir_fd, name):
    try:
        return os.readlink(name, dir_fd=dir_fd)
    except OSError:
        return "?"


def _folders_first(entries):
    """Sorted by path, so a folder comes before anything inside it."""
    return sorted(entries, key=lambda e: e.rel.split("/"))
