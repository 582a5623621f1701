"""Manifest.json: which file of the package is the root model.

The Manifest maps item ids to paths relative to `Data/` and names the root item. We read it instead of assuming
`Data/com.apple.CoreML/model.mlmodel` (a package's model may sit under another author folder), and refuse a path
that could leave the package. Real Manifests are a few hundred bytes; a larger one than MAX_BYTES is refused
before it is parsed, and so is one nested too deeply for Python's JSON parser.
"""

import json
import os

from ..errors import BadInputError
from .tree import split_relative

MANIFEST = "Manifest.json"
MAX_BYTES = 16 << 20


def root_model_relpath(tree):
    """The root model file named by the package's Manifest.json, relative to the package ("Data/...")."""
    try:
        os.stat(MANIFEST, dir_fd=tree.fd, follow_symlinks=False)
    except FileNotFoundError:
        raise BadInputError(tree.path, f"not an .mlpackage (no {MANIFEST})") from None
    except OSError as e:
        raise BadInputError(tree.show(MANIFEST), f"cannot be read ({e.strerror})") from None
    manifest_path = tree.show(MANIFEST)
    raw = tree.read_bytes(MANIFEST, limit=MAX_BYTES, what="Manifest")  # refuses a link, a FIFO, a folder
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise BadInputError(manifest_path, f"not valid JSON ({e})") from None
    except RecursionError:
        raise BadInputError(manifest_path, "not a Manifest (JSON nested too deeply)") from None
    try:
        root_id = manifest["rootModelIdentifier"]
        relative = manifest["itemInfoEntries"][root_id]["path"]
    except (KeyError, TypeError, IndexError):
        raise BadInputError(manifest_path, "names no root model (rootModelIdentifier/itemInfoEntries)") from None
    if not isinstance(relative, str):
        raise BadInputError(manifest_path, f"root model path {relative!r} is not a string")
    parts = split_relative(relative, manifest_path, f"root model path {relative!r}", base=("Data",))
    if parts[0] != "Data" or len(parts) < 2:
        raise BadInputError(manifest_path, f"root model path {relative!r} points outside the package")
    return "/".join(parts)
