"""File-level damage to a copied package: truncations, bit flips, replaced weights, Manifest.json mutations,
special files and symlinks. Each mutator takes the package folder (and its parameters) and edits it in place.

Randomness comes only from a `random.Random` built from the case's seed, and from the fixture's own bytes, so a
case id names exactly one input.
"""

import json
import os
import random
import socket
import struct
import tempfile

MODEL = os.path.join("Data", "com.apple.CoreML", "model.mlmodel")
WEIGHTS = os.path.join("Data", "com.apple.CoreML", "weights", "weight.bin")
MANIFEST = "Manifest.json"
HEADER = META = 64  # MILBlob v2: file header, and the metadata record in front of each blob
LFS_POINTER = (
    b"version https://git-lfs.github.com/spec/v1\n"
    b"oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 123\n"
)


# --- bytes -------------------------------------------------------------------------------------------------------

def truncate(package, target, length):
    with open(os.path.join(package, target), "r+b") as f:
        f.truncate(length)


def boundary_lengths(size, weights):
    """Lengths where parsers break: empty, one byte, around the 64-byte header and the first metadata record."""
    lengths = {0, 1, HEADER - 1, HEADER, HEADER + 1, size - 1, size // 2}
    if weights:
        lengths |= {HEADER + 16, HEADER + 24, HEADER + META - 1, HEADER + META, HEADER + META + 1}
    return sorted(n for n in lengths if 0 <= n < size)


def flip_bits(package, target, region, nbits, seed):
    """Flip `nbits` random bits of `target`, inside `region`: "any", "header" (first 64 bytes) or "meta" (the
    24 meaningful bytes of a blob metadata record: sentinel, dtype, size, data offset)."""
    path = os.path.join(package, target)
    data = bytearray(_read(path))
    rng = random.Random(seed)
    if region == "meta":
        starts = blob_offsets(package) or [HEADER]
        spans = [range(o, min(o + 24, len(data))) for o in starts if o < len(data)]
    else:
        spans = [range(0, min(HEADER, len(data)) if region == "header" else len(data))]
    for _ in range(nbits):
        byte = rng.choice(rng.choice(spans))
        data[byte] ^= 1 << rng.randrange(8)
    with open(path, "wb") as f:
        f.write(data)


def blob_offsets(package):
    """Offsets of the metadata records the model's constants point to in weight.bin."""
    from mlopt.package.proto import Model_pb2

    from .tree import const_values

    spec = Model_pb2.Model()
    with open(os.path.join(package, MODEL), "rb") as f:
        spec.ParseFromString(f.read())
    return sorted({v.blobFileValue.offset for v, _ in const_values(spec) if v.WhichOneof("value") == "blobFileValue"})


# --- weight.bin replaced -------------------------------------------------------------------------------------------

def _header(count, version):
    return struct.pack("<II", count, version).ljust(HEADER, b"\0")


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _write(path, data):
    """Write bytes, or an iterable of byte chunks (huge files are streamed: the test process stays small)."""
    with open(path, "wb") as f:
        f.writelines([data] if isinstance(data, bytes) else data)


def _keep_size(path, make):
    _write(path, make(os.path.getsize(path)))


WEIGHT_REPLACEMENTS = {
    "removed": os.remove,
    "empty": lambda p: _write(p, b""),
    "folder": lambda p: (os.remove(p), os.mkdir(p), _write(os.path.join(p, "weight.bin"), b"")),
    "lfs-pointer": lambda p: _write(p, LFS_POINTER),
    "header-only": lambda p: _write(p, _header(1, 2)),
    "version-1": lambda p: _keep_size(p, lambda n: _header(1, 1) + b"\0" * (n - HEADER)),
    "count-max": lambda p: _keep_size(p, lambda n: _header(0xFFFFFFFF, 2) + _read(p)[HEADER:]),
    "zeros": lambda p: _keep_size(p, lambda n: b"\0" * n),
    "random": lambda p: _keep_size(p, lambda n: random.Random(n).randbytes(n)),
}


def replace_weights(package, how):
    WEIGHT_REPLACEMENTS[how](os.path.join(package, WEIGHTS))


# --- Manifest.json ---------------------------------------------------------------------------------------------------

def _root_entry(m):
    return m["itemInfoEntries"][m["rootModelIdentifier"]]


def _with(edit):
    """A Manifest mutation that edits the parsed dict; `edit(manifest, package)` may return a replacement."""

    def mutate(manifest, package):
        result = edit(manifest, package)
        return json.dumps(manifest if result is None else result).encode()

    return mutate


def _set_path(value):
    return _with(lambda m, p: _root_entry(m).__setitem__("path", value(p) if callable(value) else value))


def _nested(opening, closing, depth=100_000):
    return lambda m, p: (opening * depth + "1" * (opening == '{"a":') + closing * depth).encode()


def _many_entries(manifest, count, batch=10_000):
    """The manifest plus an object of `count` members (~50 MB), as chunks."""
    head = json.dumps(manifest)[:-1] + ', "extra": {'
    yield head.encode()
    for start in range(0, count, batch):
        yield ", ".join(f'"i{k}": {{"path": "x"}}' for k in range(start, min(count, start + batch))).encode()
        yield b", " if start + batch < count else b"}}"


MANIFEST_MUTATIONS = {
    "not-json": lambda m, p: b"{ nope",
    "empty": lambda m, p: b"",
    "half": lambda m, p: json.dumps(m).encode()[: len(json.dumps(m)) // 2],
    "trailing-comma": lambda m, p: json.dumps(m).encode()[:-1] + b",}",
    "not-utf8": lambda m, p: b"\xff\xfe" + json.dumps(m).encode(),
    "utf16": lambda m, p: json.dumps(m).encode("utf-16"),
    "bom": lambda m, p: b"\xef\xbb\xbf" + json.dumps(m).encode(),
    "nan-values": lambda m, p: json.dumps(m).encode()[:-1] + b', "x": NaN, "y": -Infinity, "z": 1e99999}',
    "root-list": lambda m, p: b"[]",
    "root-string": lambda m, p: b'"Data/com.apple.CoreML/model.mlmodel"',
    "root-null": lambda m, p: b"null",
    "entries-list": _with(lambda m, p: m.__setitem__("itemInfoEntries", list(m["itemInfoEntries"].values()))),
    "entry-string": _with(lambda m, p: m["itemInfoEntries"].__setitem__(m["rootModelIdentifier"], "model.mlmodel")),
    "path-int": _set_path(7),
    "path-list": _set_path(["com.apple.CoreML/model.mlmodel"]),
    "path-null": _set_path(None),
    "id-int": _with(lambda m, p: m.__setitem__("rootModelIdentifier", 1)),
    "id-list": _with(lambda m, p: m.__setitem__("rootModelIdentifier", [m["rootModelIdentifier"]])),
    "id-dict": _with(lambda m, p: m.__setitem__("rootModelIdentifier", {})),
    "id-unknown": _with(lambda m, p: m.__setitem__("rootModelIdentifier", "no-such-item")),
    "no-root-id": _with(lambda m, p: m.pop("rootModelIdentifier")),
    "no-entries": _with(lambda m, p: m.pop("itemInfoEntries")),
    "no-path": _with(lambda m, p: _root_entry(m).pop("path")),
    "path-abs-passwd": _set_path("/etc/passwd"),
    "path-abs-model": _set_path(lambda p: os.path.abspath(os.path.join(p, MODEL))),
    "path-dotdot-manifest": _set_path("../Manifest.json"),
    "path-dotdot-deep": _set_path("../" * 40 + "etc/passwd"),
    "path-dotdot-inside": _set_path("com.apple.CoreML/../com.apple.CoreML/model.mlmodel"),
    "path-nul": _set_path("com.apple.CoreML/model.mlmodel\0.txt"),
    "path-newline": _set_path("com.apple.CoreML/model.mlmodel\n"),
    "path-folder": _set_path("com.apple.CoreML"),
    "path-empty": _set_path(""),
    "path-missing": _set_path("com.apple.CoreML/missing.mlmodel"),
    "path-weights": _set_path("com.apple.CoreML/weights/weight.bin"),
    "path-name-too-long": _set_path("com.apple.CoreML/" + "x" * 300),
    "path-too-long": _set_path("a/" * 3000 + "model.mlmodel"),
    "path-dev-zero": _set_path("../" * 40 + "dev/zero"),
    "nested-list-100k": _nested("[", "]"),
    "nested-dict-100k": _nested('{"a":', "}"),
    "huge-whitespace": lambda m, p: [json.dumps(m).encode()] + [b" " * (1 << 20)] * 256,
    "huge-object": lambda m, p: _many_entries(m, 2_000_000),
}


def mutate_manifest(package, how):
    path = os.path.join(package, MANIFEST)
    _write(path, MANIFEST_MUTATIONS[how](json.loads(_read(path)), package))


# --- special files and symlinks --------------------------------------------------------------------------------------

def _fifo(path):
    if os.path.lexists(path):
        os.remove(path)
    os.mkfifo(path)


def _socket(path):
    """A listening-less unix socket at `path`: bound under a short temporary name (sun_path holds 108 bytes,
    tmp_path is longer), then renamed into place."""
    if os.path.lexists(path):
        os.remove(path)
    short = os.path.join(tempfile.mkdtemp(prefix="s"), "s")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(short)
    os.rename(short, path)
    os.rmdir(os.path.dirname(short))


def _symlink(target, path):
    if os.path.lexists(path):
        os.remove(path)
    os.symlink(target, path)


WEIGHTS_DIR = os.path.dirname(WEIGHTS)
SPECIAL_FILES = {
    "fifo-extra": (WEIGHTS_DIR + "/extra.fifo", _fifo),
    "fifo-data": ("Data/stream", _fifo),
    "fifo-weights": (WEIGHTS, _fifo),
    "fifo-manifest": (MANIFEST, _fifo),
    "fifo-model": (MODEL, _fifo),
    "socket-extra": ("Data/com.apple.CoreML/sock", _socket),
    "socket-weights": (WEIGHTS, _socket),
    "loop-self": ("Data/loop", lambda p: _symlink("loop", p)),
    "loop-pair": (WEIGHTS_DIR + "/a", lambda p: (_symlink("b", p), _symlink("a", os.path.join(os.path.dirname(p), "b")))),
    "loop-weights": (WEIGHTS, lambda p: _symlink("weight.bin", p)),
    "loop-model": (MODEL, lambda p: _symlink("model.mlmodel", p)),
    "dir-cycle": ("Data/com.apple.CoreML/up", lambda p: _symlink("..", p)),
    "dangling-extra": ("Data/dangling", lambda p: _symlink("/nonexistent/mlopt-fuzz", p)),
    "dangling-weights": (WEIGHTS, lambda p: _symlink("gone.bin", p)),
    "dangling-model": (MODEL, lambda p: _symlink("gone.mlmodel", p)),
    "devnull-extra": ("Data/null", lambda p: _symlink("/dev/null", p)),
    "devnull-weights": (WEIGHTS, lambda p: _symlink("/dev/null", p)),
    "devnull-model": (MODEL, lambda p: _symlink("/dev/null", p)),
    "devzero-weights": (WEIGHTS, lambda p: _symlink("/dev/zero", p)),
    "devurandom-extra": ("Data/random", lambda p: _symlink("/dev/urandom", p)),
}


def add_special(package, how):
    relative, make = SPECIAL_FILES[how]
    make(os.path.join(package, relative))
