"""Where the output goes, and what `--force` may replace there. Checked before anything is written.

The rules (docs/safety.md):
- OUT's folder is found the way the OS finds it: links in it are resolved before `..` (`link/../x` is the `x`
  beside the link's target, not beside the link).
- OUT may not be inside the input package, at any depth, by any path: folders are compared by device and
  inode, in both directions (OUT's folder and its ancestors against every folder of the input), so links, `..`
  and bind mounts make no difference: the copy would copy itself.
- An existing OUT is refused without `--force`. With `--force` it is replaced only if it is an `.mlpackage` folder
  (a real folder, not a link, holding a Manifest.json) that does not contain the input anywhere in its tree (again
  by device and inode). OUT == IN (in place) is allowed with `--force`. A plain folder, a file, a link are never
  deleted.
- OUT's missing parent folders are created, and removed again if the run fails.
"""

import errno
import os
import stat
from dataclasses import dataclass, field

from ..errors import BadInputError, OutputError
from . import staging
from .manifest import MANIFEST

_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
_PERMISSION = (errno.EACCES, errno.EPERM, errno.EROFS)


def needs_force(path, problem):
    """The BadInputError for an OUT that only the force option may replace; `problem` names it as {force}:
    `force=True` for Python callers, `--force` on the command line."""
    return BadInputError(path, problem.format(force="force=True"), cli_problem=problem.format(force="--force"))


def write_failure(out, error, folder, action=None):
    """The one-line error for a write in `folder` for OUT that failed, naming OUT (never a hidden staging
    folder): a folder the user may not write in is bad input (exit 2); anything else - a full disk, an I/O
    error - is an OutputError (exit 1), after which nothing is left. `action` says what failed, if not a copy."""
    if error.errno in _PERMISSION:
        return BadInputError(out, f"cannot be written in {folder} ({error.strerror})")
    what = f": {action}" if action else ""
    return OutputError(out, f"could not be written{what} ({error.strerror or error}); nothing was written")


@dataclass
class Destination:
    path: str  # OUT as the user gave it
    parent: str  # OUT's folder: absolute, links resolved as far as it exists
    name: str  # OUT's last component
    dir_fd: int = None  # the parent folder, open
    created: list = field(default_factory=list)  # parent folders this run created, outermost first
    replaces: tuple = None  # (st_dev, st_ino) of the package --force replaces, None if OUT is free
    notes: list = field(default_factory=list)  # stale working folders of dead runs dealt with

    @classmethod
    def of(cls, out_path):
        """OUT's parts; nothing checked or created yet."""
        shown = os.fspath(out_path)
        folder, name = os.path.split(shown.rstrip("/") or shown)
        return cls(shown, os.path.realpath(folder or os.curdir), name)

    def close(self, failed=False):
        """Close the parent; after a failure also remove the parent folders this run created (if still empty)."""
        if self.dir_fd is not None:
            os.close(self.dir_fd)
            self.dir_fd = None
        if failed:
            for folder in reversed(self.created):
                try:
                    os.rmdir(folder)
                except OSError:
                    break
            self.created = []


def _identity(st):
    return (st.st_dev, st.st_ino)


def deepest_existing(path):
    """`path` itself if it exists, else the nearest folder above it that does."""
    while not os.path.lexists(path):
        path = os.path.dirname(path)
    return path


def ancestors(path):
    """(dev, ino) of the existing folder `path` and of every folder above it, following links as the OS does."""
    chain, path = [], os.path.realpath(path)
    while True:
        try:
            chain.append(_identity(os.stat(path)))
        except OSError:
            pass
        up = os.path.dirname(path)
        if up == path:
            return chain
        path = up


def _tree_contains(root, identity):
    """Whether folder `root` or any folder below it (links not followed) is the folder `identity`."""
    for folder, dirs, _ in os.walk(root):
        try:
            if _identity(os.lstat(folder)) == identity:
                return True
        except OSError:
            continue
    return False


def check(destination, package, force):
    """The rules alone, nothing created or removed: what `--dry-run` checks, so it fails where a real run would."""
    _locate(destination, package)
    absolute = os.path.join(destination.parent, destination.name)
    if os.path.lexists(absolute):
        destination.replaces = _check_replaceable(destination.path, absolute, package, force)


def prepare(destination, package, force):
    """Check OUT against the rules, remove what dead runs left for it, create its missing parent folders
    (recorded in `destination.created` as they are made, so an interrupt at any point can remove them) and open
    its parent; BadInputError if OUT breaks a rule."""
    existing = _locate(destination, package)
    if existing == destination.parent:
        _open_parent(destination)
        destination.notes += staging.remove_stale(destination.dir_fd, destination.parent, destination.name)
    absolute = os.path.join(destination.parent, destination.name)
    if os.path.lexists(absolute):
        destination.replaces = _check_replaceable(destination.path, absolute, package, force)
    if destination.dir_fd is None:
        _create_parents(destination, existing)
        _open_parent(destination)


def _locate(destination, package):
    """The deepest folder of OUT's path that exists, after checking OUT's name and that it is not inside IN."""
    shown, parent, name = destination.path, destination.parent, destination.name
    if name in ("", ".", ".."):
        raise BadInputError(shown, "is not a name for a package folder")
    existing = deepest_existing(parent)
    if not os.path.isdir(existing):
        raise BadInputError(shown, f"cannot be created: {existing} is not a folder")
    above = set(ancestors(existing))
    if any(folder in above for folder in package.folder_identities()):
        raise BadInputError(shown, f"is inside the input package {package.path}; write the output outside it")
    return existing


def _open_parent(destination):
    try:
        destination.dir_fd = os.open(destination.parent, _DIR_FLAGS)
    except OSError as e:
        raise BadInputError(destination.path, f"cannot be written: {destination.parent} cannot be opened ({e.strerror})") from None


def _check_replaceable(shown, absolute, package, force):
    st = os.lstat(absolute)
    same = os.path.exists(absolute) and _identity(os.stat(absolute)) == package.tree.identity
    if not force:
        raise needs_force(shown, "is the input package (in-place needs {force})" if same else "already exists (use {force} to replace it)")
    if stat.S_ISLNK(st.st_mode):
        raise needs_force(shown, "is a symbolic link; {force} replaces only an .mlpackage folder, never a link (name the package itself)")
    if not stat.S_ISDIR(st.st_mode):
        raise BadInputError(shown, "exists and is not a folder; refusing to replace it")
    try:
        manifest = os.stat(os.path.join(absolute, MANIFEST), follow_symlinks=False)
    except OSError:
        manifest = None
    if manifest is None or not stat.S_ISREG(manifest.st_mode):
        raise needs_force(shown, f"is a folder but not an .mlpackage (no {MANIFEST}); {{force}} replaces only a package, so it is left alone")
    if not same and (_identity(st) in ancestors(package.path) or _tree_contains(absolute, package.tree.identity)):
        raise BadInputError(shown, f"contains the input package {package.path}; refusing to replace it")
    return _identity(st)


def _create_parents(destination, existing):
    missing = []
    folder = destination.parent
    while folder != existing:
        missing.append(folder)
        folder = os.path.dirname(folder)
    for folder in reversed(missing):
        try:
            os.mkdir(folder)
        except FileExistsError:
            continue  # made meanwhile by someone else: not ours to remove
        except OSError as e:
            raise write_failure(destination.path, e, os.path.dirname(folder), f"folder {folder} cannot be made") from None
        destination.created.append(folder)
