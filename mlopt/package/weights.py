"""Constants stored in `weights/weight.bin` (MILBlob v2), read lazily, one blob at a time, never outside the package.

Layout (little-endian, 64-byte aligned): a 64-byte file header (uint32 blob count, uint32 version = 2), then per
blob a 64-byte metadata record at the offset a const points to - uint32 sentinel 0xDEADBEEF, uint32 dtype code,
uint64 size in bytes, uint64 absolute data offset - and the data. The codes are those coremltools' blob writer
(`coremltools.libmilstoragepython._BlobStorageWriter`) records: checked by writing one blob of each type.

Weight files are opened through the package's `PackageTree`: a `fileName` such as `@model_path/../../etc/passwd`
or a weight.bin that is a link, a FIFO or a folder is refused as bad input (`BlobError`, exit 2), and so is a
Git LFS pointer left where weight.bin should be (a clone without git-lfs).

Small blobs (a gamma, a bias: up to SMALL bytes) are read with `os.pread`: mapping them would map whole page-cache
folios (megabytes around each 4 KB gamma of a freshly copied file) into our RSS. Large blobs are numpy views into
one read-only memory map per file: a 2 GB model costs address space, not 2 GB of copies.
"""

import math
import mmap
import os
import struct

import numpy as np

from ..errors import BadInputError
from .tree import PackageTree, refuse_lfs_pointer, split_relative

SENTINEL = 0xDEADBEEF
HEADER = 64  # file header and per-blob metadata record, bytes
VERSION = 2
SMALL = 1 << 20
WIDEN_CHUNK = 1 << 22  # bytes of stored weight converted at a time by read(widen_to=...)
MODEL_PATH = "@model_path/"
# blob dtype code -> numpy dtype (whole-byte types) ...
BLOB_DTYPES = {1: np.float16, 2: np.float32, 3: np.uint8, 4: np.int8, 6: np.int16, 7: np.uint16, 14: np.int32, 15: np.uint32}
# ... and the bits per element of every code (5 is bfloat16; 8-13 the sub-byte palettes and quantized weights)
BLOB_BITS = {**{k: np.dtype(v).itemsize * 8 for k, v in BLOB_DTYPES.items()}, 5: 16, 8: 4, 9: 1, 10: 2, 11: 4, 12: 3, 13: 6}


class BlobError(BadInputError):
    """A weight file or a blob in it that cannot be what the program says: bad input, exit 2."""


class BlobReader:
    """Reads blobs of one package. `root`: the package (a PackageTree, not closed here) or a folder path (opened
    and owned); `model_dir_rel`: the folder of the model file inside it, what "@model_path" stands for."""

    def __init__(self, root, model_dir_rel="", small=SMALL):
        self._root = root
        self._tree = root if isinstance(root, PackageTree) else None
        self._owns_tree = self._tree is None
        self.model_dir_rel = model_dir_rel
        self.small = small
        self._files = {}  # file name -> (fd, size)
        self._maps = {}

    @property
    def tree(self):
        if self._tree is None:
            self._tree = PackageTree(self._root)
        return self._tree

    def relpath(self, file_name):
        """The weight file a const's `fileName` names, relative to the package; never outside it."""
        name = file_name[len(MODEL_PATH):] if file_name.startswith(MODEL_PATH) else file_name
        base = self.model_dir_rel.split("/") if self.model_dir_rel else ()
        shown = self.tree.show(self.model_dir_rel)
        return "/".join(split_relative(name, shown, f"weight file name {file_name!r}", base=base))

    def path(self, file_name):
        return self.tree.show(self.relpath(file_name))

    def _file(self, file_name):
        if file_name not in self._files:
            rel = self.relpath(file_name)
            fd = self.tree.open_file(rel, what="weight file")
            size = os.fstat(fd).st_size
            self._files[file_name] = (fd, size)
            _check_header(self.tree.show(rel), os.pread(fd, HEADER, 0), size)
        return self._files[file_name]

    def open_file(self, file_name):
        """(fd, size in bytes) of the weight file a const's `fileName` names, opened once and checked; the reader
        owns the fd (the weight writer copies byte ranges from it)."""
        return self._file(file_name)

    def _map(self, file_name):
        if file_name not in self._maps:
            fd, _ = self._file(file_name)
            self._maps[file_name] = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        return self._maps[file_name]

    def same_file_as(self, other, file_name, chunk=1 << 24):
        """True if `file_name` holds the same bytes here and in `other`'s package (the same inode: at once)."""
        fd, size = self._file(file_name)
        other_fd, other_size = other._file(file_name)
        a, b = os.fstat(fd), os.fstat(other_fd)
        if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino):
            return True
        if size != other_size:
            return False
        for offset in range(0, size, chunk):
            if os.pread(fd, chunk, offset) != os.pread(other_fd, chunk, offset):
                return False
        return True

    def check(self, file_name, offset, np_dtype, shape):
        """BlobError unless a blob of `np_dtype` (None: any) and `shape` is stored at `offset`; returns
        (numpy dtype to read it as, element count, absolute data offset, the blob's dtype code). Reads 24 bytes."""
        fd, file_size = self._file(file_name)
        if offset + HEADER > file_size:
            raise BlobError(self.path(file_name), f"blob offset {offset} is outside the file ({file_size} bytes)")
        if offset < HEADER:
            raise BlobError(self.path(file_name), f"no blob at offset {offset} (that is the file header)")
        sentinel, code, size, data_offset = struct.unpack_from("<IIQQ", os.pread(fd, 24, offset))
        if sentinel != SENTINEL:
            raise BlobError(self.path(file_name), f"no blob at offset {offset} (bad sentinel {sentinel:#x})")
        if data_offset + size > file_size:
            raise BlobError(self.path(file_name), f"blob at offset {offset}: its {size} bytes at {data_offset} run past the end of the file ({file_size} bytes): truncated?")
        count = math.prod(int(d) for d in shape)
        if np_dtype is None:
            return None, count, data_offset, code
        stored = BLOB_DTYPES.get(code)
        if stored is not None and np.dtype(stored).itemsize != np.dtype(np_dtype).itemsize:
            raise BlobError(self.path(file_name), f"blob at offset {offset} stores {np.dtype(stored).name}, the program reads it as {np.dtype(np_dtype).name}")
        if stored is not None and np.dtype(np_dtype).kind == np.dtype(stored).kind:
            np_dtype = stored
        bits = BLOB_BITS.get(code, np.dtype(np_dtype).itemsize * 8)
        needed = (count * bits + 7) // 8
        if needed > size:
            raise BlobError(self.path(file_name), f"blob at offset {offset} holds {size} bytes; the program's shape {list(shape)} needs {needed}")
        return np_dtype, count, data_offset, code

    def read(self, file_name, offset, np_dtype, shape, copy=False, widen_to=None):
        """The blob at `offset` as a read-only array of `np_dtype` and `shape`: a view into the file's memory map
        if it is large, unless `copy`: then an array of its own, whose memory goes when the array does (a run
        that drops each weight after its last use then holds one weight at a time, not every page it touched).
        `widen_to` (a wider dtype, float64 for an exact run) gives an array of its own in that dtype, converted
        WIDEN_CHUNK bytes at a time: the stored copy is never held whole beside the wide one."""
        np_dtype, count, data_offset, _ = self.check(file_name, offset, np_dtype, shape)
        fd, _ = self._file(file_name)
        nbytes = count * np.dtype(np_dtype).itemsize
        if widen_to is not None:
            return self._widened(fd, file_name, data_offset, np_dtype, count, np.dtype(widen_to)).reshape(shape)
        if nbytes <= self.small or copy:
            return _pread_exactly(fd, nbytes, data_offset, self.path(file_name)).view(np_dtype).reshape(shape)
        return np.frombuffer(self._map(file_name), dtype=np_dtype, count=count, offset=data_offset).reshape(shape)

    def _widened(self, fd, file_name, data_offset, np_dtype, count, wide):
        out = np.empty(count, wide)
        step = max(1, WIDEN_CHUNK // np.dtype(np_dtype).itemsize)
        for start in range(0, count, step):
            n = min(step, count - start)
            chunk = _pread_exactly(fd, n * np.dtype(np_dtype).itemsize, data_offset + start * np.dtype(np_dtype).itemsize, self.path(file_name))
            out[start : start + n] = chunk.view(np_dtype)
        out.flags.writeable = False
        return out

    def read_window(self, file_name, offset, np_dtype, shape, start, count):
        """Elements `start` .. `start + count` (flat, C order) of the blob at `offset`, as a fresh array: a large
        constant read through a bounded window (`count` elements in memory, whatever the blob's size)."""
        np_dtype, total, data_offset, _ = self.check(file_name, offset, np_dtype, shape)
        start, stop = max(0, int(start)), min(total, int(start) + int(count))
        if stop <= start:
            return np.empty(0, np_dtype)
        fd, _ = self._file(file_name)
        size = np.dtype(np_dtype).itemsize
        return _pread_exactly(fd, (stop - start) * size, data_offset + start * size, self.path(file_name)).view(np_dtype)

    def read_packed(self, file_name, offset, bits, signed, shape):
        """The sub-byte blob (`bits` per element, packed LSB first) at `offset`, unpacked into a fresh int8 (if
        `signed`) or uint8 array of `shape`. BlobError unless the blob records a type of `bits` bits."""
        _, count, data_offset, code = self.check(file_name, offset, np.uint8, shape)
        fd, _ = self._file(file_name)
        if BLOB_BITS.get(code) != bits:
            raise BlobError(self.path(file_name), f"blob at offset {offset} stores {BLOB_BITS.get(code, '?')}-bit elements, the program reads {bits}-bit ones")
        packed = _pread_exactly(fd, (count * bits + 7) // 8, data_offset, self.path(file_name))
        return unpack_bits(packed, bits, signed, count).reshape(shape)

    def close(self):
        for m in self._maps.values():
            try:
                m.close()
            except BufferError:  # arrays still view the map; it closes when they go
                pass
        for fd, _ in self._files.values():
            os.close(fd)
        self._maps.clear()
        self._files.clear()
        if self._owns_tree and self._tree is not None:
            self._tree.close()
            self._tree = None


def unpack_bits(packed, bits, signed, count):
    """`count` elements of `bits` bits each from the bytes `packed` (LSB first: element 0 is the low bits of byte
    0), as int8 (two's complement if `signed`) or uint8. The layout coremltools' blob writer and immediate values
    (`optimize._utils.pack_elements_into_bits`) use."""
    packed = np.frombuffer(bytes(packed), np.uint8) if not isinstance(packed, np.ndarray) else packed.view(np.uint8)
    if packed.size * 8 < count * bits:
        raise ValueError(f"{packed.size} bytes cannot hold {count} {bits}-bit elements")
    bitarray = np.unpackbits(packed.reshape(-1), bitorder="little")[: count * bits].reshape(count, bits)
    values = (bitarray.astype(np.uint16) << np.arange(bits, dtype=np.uint16)).sum(axis=1, dtype=np.uint16)
    if signed:
        values = values.astype(np.int16) - (values >= (1 << (bits - 1))).astype(np.int16) * (1 << bits)
        return values.astype(np.int8)
    return values.astype(np.uint8)


def _pread_exactly(fd, nbytes, offset, path, chunk=1 << 30):
    """`nbytes` from `offset` into a fresh buffer, in reads of at most `chunk` (a single read stops near 2 GB)."""
    buffer = np.empty(nbytes, np.uint8)
    view, done = memoryview(buffer), 0
    while done < nbytes:
        got = os.preadv(fd, [view[done : done + chunk]], offset + done) if hasattr(os, "preadv") else _pread_into(fd, view, done, chunk, offset)
        if got == 0:
            raise BlobError(path, f"ends {nbytes - done} bytes early reading {nbytes} bytes at {offset} (truncated while being read?)")
        done += got
    buffer.flags.writeable = False
    return buffer


def _pread_into(fd, view, done, chunk, offset):
    data = os.pread(fd, min(chunk, len(view) - done), offset + done)
    view[done : done + len(data)] = data
    return len(data)


def _check_header(path, header, size):
    refuse_lfs_pointer(header, path, "the weights", BlobError)
    if size < HEADER:
        raise BlobError(path, f"is {size} bytes, too short for a weight file (a {HEADER}-byte header at least)")
    _count, version = struct.unpack_from("<II", header)
    if version != VERSION:
        raise BlobError(path, f"is not a MILBlob v{VERSION} weight file (header says version {version})")


def blob_values(function):
    """Every `Value` of a function stored in a weight file: const values and constexpr attributes, and the inline
    bindings iOS18 constexpr ops use, nested blocks included."""
    stack = list(function.block_specializations.values())
    while stack:
        block = stack.pop()
        for op in block.operations:
            stack.extend(op.blocks)
            values = list(op.attributes.values())
            values += [b.value for a in op.inputs.values() for b in a.arguments if b.WhichOneof("binding") == "value"]
            yield from (v for v in values if v.WhichOneof("value") == "blobFileValue")
