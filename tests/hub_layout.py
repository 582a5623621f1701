"""A Hugging Face hub cache laid out by hand, as huggingface_hub's snapshot download does (docs/safety.md): each
file of the snapshot a relative link `os.path.relpath(blob, folder of the link)` to `blobs/<sha256>`, folders real.
Used by tests/test_hub_cache.py and the fuzz layouts; nothing is downloaded."""

import hashlib
import os

from conftest import fixture_path

REPO = "models--apple--tiny"
REVISION = "0123456789abcdef0123456789abcdef01234567"
IN_REPO = os.path.join("models", "tiny.mlpackage")  # where the package sits in the repository's own tree
WEIGHTS = os.path.join("Data", "com.apple.CoreML", "weights", "weight.bin")
MODEL = os.path.join("Data", "com.apple.CoreML", "model.mlmodel")


def hub_cache(cache, fixture="hf_fp16_ios17", repo=REPO, in_repo=IN_REPO):
    """Lay `fixture` out in `cache` as huggingface_hub's snapshot download does; returns the package's path."""
    repository = os.path.join(cache, repo)
    blobs = os.path.join(repository, "blobs")
    package = os.path.join(repository, "snapshots", REVISION, in_repo)
    os.makedirs(blobs, exist_ok=True)
    os.makedirs(os.path.join(repository, "refs"), exist_ok=True)
    with open(os.path.join(repository, "refs", "main"), "w") as f:
        f.write(REVISION)
    source = fixture_path(fixture)
    for folder, _, files in os.walk(source):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                data = f.read()
            blob = os.path.join(blobs, hashlib.sha256(data).hexdigest())
            with open(blob, "wb") as f:
                f.write(data)
            pointer = os.path.join(package, os.path.relpath(os.path.join(folder, name), source))
            os.makedirs(os.path.dirname(pointer), exist_ok=True)
            os.symlink(os.path.relpath(blob, os.path.dirname(pointer)), pointer)
    return package
