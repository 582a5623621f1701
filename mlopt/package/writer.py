"""Write the optimized package: every file copied byte for byte except the root model, written from the new spec.

The output is assembled in a hidden temporary folder next to the destination and renamed into place only when
complete, so an error or Ctrl-C never leaves a partial package. Files are copied by the file system (copy.py:
clone, copy_file_range, or a streamed copy; hard links with `link`): the weight file is never read into memory.
"""

import os
import shutil
import tempfile

from ..errors import BadInputError
from .copy import copy_file


def write_package(package, spec, out_path, force=False, link=False):
    """Write `package` to `out_path` atomically, its root model replaced by `spec` (None: copied unchanged).

    Returns the copy methods used, e.g. {"copy_file_range"}. With `link`, files are hard-linked to the input's:
    safe because neither mlopt nor Core ML edits a package's files in place, but editing one then edits both."""
    out_path = os.path.abspath(os.fspath(out_path))
    in_place = os.path.exists(out_path) and os.path.samefile(out_path, package.path)
    if os.path.lexists(out_path) and not force:
        what = "is the input package (in-place needs --force)" if in_place else "already exists (use --force to replace it)"
        raise BadInputError(out_path, what)
    if os.path.lexists(out_path) and not os.path.isdir(out_path):
        raise BadInputError(out_path, "exists and is not a folder; refusing to replace it")
    parent = os.path.dirname(out_path)
    os.makedirs(parent, exist_ok=True)

    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(out_path)}.mlopt-tmp-", dir=parent)
    try:
        methods = _copy_package(package, spec, staging, link)
        _replace(staging, out_path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return methods


def _copy_package(package, spec, dest, link):
    model_rel = package.model_relpath
    methods = set()
    for root, dirs, files in os.walk(package.path):
        rel_root = os.path.relpath(root, package.path)
        for d in dirs:
            os.makedirs(os.path.join(dest, rel_root, d), exist_ok=True)
        for name in files:
            rel = os.path.normpath(os.path.join(rel_root, name))
            target = os.path.join(dest, rel)
            if rel == model_rel and spec is not None:
                with open(target, "wb") as f:
                    f.write(spec.SerializeToString())
            else:
                methods.add(copy_file(os.path.join(root, name), target, link=link))
    os.chmod(dest, 0o755)  # mkdtemp creates 0700
    return methods


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
