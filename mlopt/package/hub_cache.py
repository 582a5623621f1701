"""The Hugging Face hub cache: the one place where mlopt follows a link inside a package.

`huggingface_hub` (and the other clients that share its cache layout) stores each downloaded repository as

    <cache>/models--ORG--NAME/blobs/<hash>                      every file's bytes, once, named by content hash
    <cache>/models--ORG--NAME/snapshots/<revision>/<path>       the repository's tree at one revision

In a snapshot, folders are real folders and every file is a relative symbolic link to its blob, made with
`os.path.relpath(blob, folder of the link)`: `snapshots/REV/x.mlpackage/Manifest.json -> ../../../blobs/<hash>`,
one `..` per folder between the link and the repository folder (huggingface_hub, `file_download._create_symlink`;
the layout: https://huggingface.co/docs/hub/local-cache).

`BlobStore.around` recognises a folder inside such a snapshot, and `BlobStore.blob_name` accepts exactly that
form of link: relative, as many `..` as lead from the link's folder to the repository folder, then `blobs/` and
one name. Everything else - an absolute link, one that climbs elsewhere (`../../blobs/../../x`), one into another
repository's blobs - is refused by the caller as any link is. The blob itself is then opened from the open
`blobs/` folder by name with `O_NOFOLLOW` (tree.py), so whatever the link text says, only a regular file that sits
in this repository's own `blobs/` folder can ever be read.
"""

import os
import stat

REPOSITORY_KINDS = ("models--", "datasets--", "spaces--")  # the cache's repository folder names
SNAPSHOTS, BLOBS = "snapshots", "blobs"
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


class BlobStore:
    """The open `blobs/` folder of the hub-cache repository a package folder lives in.

    `depth`: how many folders lie between the repository folder and the package folder, the package folder
    included (`snapshots`, the revision, any folders of the repository's own tree, the package)."""

    def __init__(self, repository, fd, depth):
        self.repository = repository  # the repository folder, links resolved (for messages)
        self.fd = fd
        self.depth = depth

    @property
    def path(self):
        return os.path.join(self.repository, BLOBS)

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    @classmethod
    def around(cls, path, folder_fd):
        """The BlobStore of the repository whose snapshot holds the open folder `folder_fd` (opened from `path`),
        or None if it is not in a hub cache snapshot. The folder is checked to be that snapshot's by walking up
        from its own fd, so a path swapped meanwhile cannot lend it another repository's blobs."""
        real = os.path.realpath(path)
        parts = real.split(os.sep)
        found = [k for k in range(1, len(parts) - 2) if parts[k] == SNAPSHOTS and parts[k - 1].startswith(REPOSITORY_KINDS)]
        if not found:
            return None
        k = found[-1]
        repository, depth = os.sep.join(parts[:k]) or os.sep, len(parts) - k
        try:
            repository_fd = os.open(repository, _DIR_FLAGS & ~os.O_NOFOLLOW)
        except OSError:
            return None
        blobs_fd = None
        try:
            snapshots = os.stat(SNAPSHOTS, dir_fd=repository_fd, follow_symlinks=False)
            if not stat.S_ISDIR(snapshots.st_mode) or _identity_above(folder_fd, depth - 1) != (snapshots.st_dev, snapshots.st_ino):
                return None
            blobs_fd = os.open(BLOBS, _DIR_FLAGS, dir_fd=repository_fd)
            store, blobs_fd = cls(repository, blobs_fd, depth), None
            return store
        except OSError:
            return None
        finally:
            os.close(repository_fd)
            if blobs_fd is not None:
                os.close(blobs_fd)

    def blob_name(self, target, folder_depth):
        """The name in `blobs/` that the link text `target`, in a folder `folder_depth` levels below the package
        folder, leads to in the form the hub cache writes; None for any other link."""
        parts = target.split("/")
        ups = self.depth + folder_depth
        if len(parts) != ups + 2 or any(p != ".." for p in parts[:ups]) or parts[ups] != BLOBS:
            return None
        name = parts[-1]
        if name in ("", ".", "..") or any(ord(c) < 32 for c in name):
            return None
        return name


def _identity_above(fd, levels):
    """(st_dev, st_ino) of the folder `levels` levels above the open folder `fd`, walked through `..` (the file
    system's own parent, not a path's)."""
    current = os.dup(fd)
    try:
        for _ in range(levels):
            parent = os.open("..", _DIR_FLAGS, dir_fd=current)
            os.close(current)
            current = parent
        st = os.fstat(current)
        return (st.st_dev, st.st_ino)
    finally:
        os.close(current)
