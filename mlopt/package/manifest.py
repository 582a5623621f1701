"""Manifest.json: which file of the package is the root model.

The Manifest maps item ids to paths relative to `Data/` and names the root item. We read it instead of assuming
`Data/com.apple.CoreML/model.mlmodel`, and refuse a path that leaves the package.
"""

import json
import os

from ..errors import BadInputError

MANIFEST = "Manifest.json"


def root_model_path(package_dir):
    """Absolute path of the root model file named by the package's Manifest.json."""
    manifest_path = os.path.join(package_dir, MANIFEST)
    if not os.path.isfile(manifest_path):
        raise BadInputError(package_dir, f"not an .mlpackage (no {MANIFEST})")
    try:
        with open(manifest_path, "rb") as f:
            manifest = json.loads(f.read().decode("utf-8"))
        root_id = manifest["rootModelIdentifier"]
        relative = manifest["itemInfoEntries"][root_id]["path"]
    except (ValueError, UnicodeDecodeError) as e:
        raise BadInputError(manifest_path, f"not valid JSON ({e})") from None
    except (KeyError, TypeError):
        raise BadInputError(manifest_path, "names no root model (rootModelIdentifier/itemInfoEntries)") from None
    if not isinstance(relative, str) or os.path.isabs(relative):
        raise BadInputError(manifest_path, f"root model path {relative!r} is not a relative path")
    data_dir = os.path.realpath(os.path.join(package_dir, "Data"))
    model_path = os.path.realpath(os.path.join(data_dir, relative))
    if os.path.commonpath([data_dir, model_path]) != data_dir:
        raise BadInputError(manifest_path, f"root model path {relative!r} points outside the package")
    return model_path
