"""Write the optimized package: every file copied byte for byte except the root model, written from the new spec.

The output is assembled in a hidden temporary folder next to the destination and renamed into place only when
complete, so an error or Ctrl-C never leaves a partial package. The weight file is streamed by the kernel
(`shutil.copyfile` uses sendfile/copy_file_range on Linux, fcopyfile on macOS): it is never read into Python memory.
"""

import os
import shutil
import tempfile

from ..errors import BadInputError


def write_package(package, spec, out_path, force=False):
    """Write `package` to `out_path` atomically, its root model replaced by `spec` (None: copied unchanged)."""
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
        _copy_package(package, spec, staging)
        _replace(staging, out_path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _copy_package(package, spec, dest):
    model_rel = package.model_relpath
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
                shutil.copyfile(os.path.join(root, name), target)
    os.chmod(dest, 0o755)  # mkdtemp creates 0700


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
