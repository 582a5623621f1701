"""Write the optimized package: every file copied byte for byte except the root model, written from the new spec.

`PackageWriter` starts copying as soon as it is opened, in a background thread, into a hidden staging folder next
to the destination; the caller analyses and rewrites the spec meanwhile (the copy is kernel work and does not hold
the GIL), then `commit`s the model file. The staging folder is renamed into place only when complete, so an error
or Ctrl-C never leaves a partial package. Files are copied by the file system (copy.py: clone, copy_file_range, or
a streamed copy; hard links with `link`): the weight file is never read into memory.
"""

import os
import shutil
import tempfile
import threading

from ..errors import BadInputError
from .copy import Cancelled, copy_file


class PackageWriter:
    """with PackageWriter(package, out) as writer: ...; writer.commit(spec) - copy first, model file last."""

    def __init__(self, package, out_path, force=False, link=False):
        self.package = package
        self.out_path = os.path.abspath(os.fspath(out_path))
        self.link = link
        self.methods = set()  # copy methods used, e.g. {"copy_file_range"}
        self._error = None
        self._cancel = threading.Event()
        check_output(package, self.out_path, force)
        parent = os.path.dirname(self.out_path)
        os.makedirs(parent, exist_ok=True)
        self.staging = tempfile.mkdtemp(prefix=f".{os.path.basename(self.out_path)}.mlopt-tmp-", dir=parent)
        self._thread = threading.Thread(target=self._copy_all, name="mlopt-copy", daemon=True)
        self._thread.start()

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        if kind is not None:
            self.abort()
        return False

    def _copy_all(self):
        try:
            for source, target in _files(self.package, self.staging):
                if self._cancel.is_set():
                    return
                self.methods.add(copy_file(source, target, link=self.link, cancelled=self._cancel.is_set))
        except Cancelled:
            pass
        except BaseException as e:  # handed to commit()
            self._error = e

    def commit(self, spec):
        """Wait for the copy, write the model file (`spec`, or the input's bytes if None), move into place."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        target = os.path.join(self.staging, self.package.model_relpath)
        if spec is None:
            self.methods.add(copy_file(self.package.model_path, target, link=self.link))
        else:
            with open(target, "wb") as f:
                f.write(spec.SerializeToString())
        os.chmod(self.staging, 0o755)  # mkdtemp creates 0700
        _replace(self.staging, self.out_path)
        return self.methods

    def abort(self):
        self._cancel.set()
        self._thread.join()
        shutil.rmtree(self.staging, ignore_errors=True)


def write_package(package, spec, out_path, force=False, link=False):
    """Write `package` to `out_path` atomically, its root model replaced by `spec` (None: copied unchanged).

    Returns the copy methods used. With `link`, files are hard-linked to the input's: safe because neither mlopt
    nor Core ML edits a package's files in place, but editing one then edits both."""
    with PackageWriter(package, out_path, force=force, link=link) as writer:
        return writer.commit(spec)


def check_output(package, out_path, force):
    """Refuse an output that exists (unless `force`), is the input (unless `force`), or is not a folder."""
    exists = os.path.lexists(out_path)
    if exists and not force:
        same = os.path.exists(out_path) and os.path.samefile(out_path, package.path)
        raise BadInputError(out_path, "is the input package (in-place needs --force)" if same else "already exists (use --force to replace it)")
    if exists and not os.path.isdir(out_path):
        raise BadInputError(out_path, "exists and is not a folder; refusing to replace it")


def _files(package, dest):
    """(source, target) for every file but the root model, creating the folders on the way."""
    model_rel = package.model_relpath
    for root, dirs, files in os.walk(package.path):
        rel_root = os.path.relpath(root, package.path)
        for d in dirs:
            os.makedirs(os.path.join(dest, rel_root, d), exist_ok=True)
        for name in files:
            rel = os.path.normpath(os.path.join(rel_root, name))
            if rel != model_rel:
                yield os.path.join(root, name), os.path.join(dest, rel)


def _replace(staging, out_path):
    """Move the finished package into place; an existing output is swapped out, then removed."""
    if not os.path.lexists(out_path):
        os.rename(staging, out_path)
        return
    backup = tempfile.mkdtemp(prefix=f".{os.path.basename(out_path)}.mlopt-old-", dir=os.path.dirname(out_path))
    os.rmdir(backup)
    os.rename(out_path, backup)
    try:
        os.rename(staging, out_path)
    except BaseException:
        os.rename(backup, out_path)
        raise
    shutil.rmtree(backup, ignore_errors=True)
