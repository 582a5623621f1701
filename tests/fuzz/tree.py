"""Looking at file trees without being fooled by them: digests, leftover staging folders, complete packages.

The trees under test contain FIFOs, sockets, symlink loops and links to /dev and /etc, so nothing here follows a
symlink or opens anything but a regular file (opening a FIFO blocks; following a link to `/` walks the disk).
"""

import hashlib
import json
import os
import stat

STAGING_MARKERS = (".mlopt-tmp-", ".mlopt-old-")


def tree_digest(path):
    """sha256 over the relative paths, file bytes and symlink targets under `path` (None if it does not exist).
    Special files count by their type only."""
    if not os.path.lexists(path):
        return None
    h = hashlib.sha256()

    def visit(full, rel):
        st = os.lstat(full)
        if stat.S_ISLNK(st.st_mode):
            h.update(f"L {rel} -> {os.readlink(full)}\0".encode())
        elif stat.S_ISDIR(st.st_mode):
            h.update(f"D {rel}\0".encode())
            for name in sorted(os.listdir(full)):
                visit(os.path.join(full, name), os.path.join(rel, name))
        elif stat.S_ISREG(st.st_mode):
            h.update(f"F {rel} {st.st_size}\0".encode())
            fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                while chunk := os.read(fd, 1 << 20):
                    h.update(chunk)
            finally:
                os.close(fd)
        else:
            h.update(f"S {rel} {stat.S_IFMT(st.st_mode):o}\0".encode())

    visit(os.fspath(path), ".")
    return h.hexdigest()


def staging_leftovers(root):
    """Every path under `root` whose name marks an mlopt staging or backup folder (symlinks are not followed)."""
    found = []
    for folder, dirs, files in os.walk(root):
        found += [os.path.join(folder, n) for n in dirs + files if any(m in n for m in STAGING_MARKERS)]
    return sorted(found)


def package_problem(path):
    """None if `path` is a complete package: Manifest.json naming a root model that parses as a Core ML model,
    and every weight file its constants point to present as a regular file. Otherwise what is wrong."""
    from mlopt.package.proto import Model_pb2

    if not os.path.isdir(path):
        return "not a folder"
    try:
        with open(os.path.join(path, "Manifest.json"), "rb") as f:
            manifest = json.load(f)
        model_path = os.path.join(path, "Data", manifest["itemInfoEntries"][manifest["rootModelIdentifier"]]["path"])
        spec = Model_pb2.Model()
        with open(model_path, "rb") as f:
            spec.ParseFromString(f.read())
    except Exception as e:  # noqa: BLE001 - any failure means incomplete
        return f"unreadable: {type(e).__name__}: {e}"
    model_dir = os.path.dirname(model_path)
    for name in sorted(blob_files(spec)):
        if not os.path.isfile(os.path.join(model_dir, name.replace("@model_path/", "", 1))):
            return f"weight file {name} missing"
    return None


def blob_files(spec):
    return {value.blobFileValue.fileName for value, _ in const_values(spec) if value.WhichOneof("value") == "blobFileValue"}


def const_values(spec):
    """(value, op) for the `val` of every const op of every function and nested block."""
    found = []
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            found += [(op.attributes["val"], op) for op in walk_ops(block) if op.type == "const" and "val" in op.attributes]
    return found


def walk_ops(block):
    for op in block.operations:
        yield op
        for nested in op.blocks:
            yield from walk_ops(nested)
