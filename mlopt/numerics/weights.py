"""Constants stored in `weights/weight.bin` (MILBlob v2), read lazily, one blob at a time.

Layout (little-endian, 64-byte aligned; coreml-facts.md): a 64-byte file header, then per blob a 64-byte metadata
record at the offset a const points to - uint32 sentinel 0xDEADBEEF, uint32 dtype code, uint64 size in bytes,
uint64 absolute data offset - and the data.

Small blobs (a gamma, a bias: up to SMALL bytes) are read with `os.pread`: mapping them would map whole page-cache
folios (megabytes around each 4 KB gamma of a freshly copied file) into our RSS. Large blobs are numpy views into
one read-only memory map per file: a 2 GB model costs address space, not 2 GB of copies.
"""

import mmap
import os
import struct

import numpy as np

SENTINEL = 0xDEADBEEF
SMALL = 1 << 20
# MILBlob dtype codes (BlobStorageCommon.hpp) -> numpy
BLOB_DTYPES = {1: np.float16, 2: np.float32, 3: np.uint8, 4: np.int8, 5: np.uint16, 6: np.int16, 14: np.int32, 15: np.uint32}


class BlobError(ValueError):
    pass


class BlobReader:
    def __init__(self, model_dir, small=SMALL):
        self.model_dir = model_dir  # the folder holding model.mlmodel: "@model_path"
        self.small = small
        self._files = {}  # file name -> (fd, size)
        self._maps = {}

    def path(self, file_name):
        if file_name.startswith("@model_path/"):
            return os.path.join(self.model_dir, file_name[len("@model_path/") :])
        return os.path.join(self.model_dir, file_name)

    def _file(self, file_name):
        if file_name not in self._files:
            fd = os.open(self.path(file_name), os.O_RDONLY)
            self._files[file_name] = (fd, os.fstat(fd).st_size)
        return self._files[file_name]

    def _map(self, file_name):
        if file_name not in self._maps:
            fd, _ = self._file(file_name)
            self._maps[file_name] = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        return self._maps[file_name]

    def read(self, file_name, offset, np_dtype, shape):
        """The blob at `offset` as a read-only array of `np_dtype` and `shape`."""
        fd, file_size = self._file(file_name)
        if offset + 64 > file_size:
            raise BlobError(f"{self.path(file_name)}: blob offset {offset} past the end of the file")
        sentinel, code, size, data_offset = struct.unpack_from("<IIQQ", os.pread(fd, 24, offset))
        if sentinel != SENTINEL:
            raise BlobError(f"{self.path(file_name)}: no blob at offset {offset} (bad sentinel {sentinel:#x})")
        stored = BLOB_DTYPES.get(code)
        if stored is not None and np.dtype(stored).itemsize == np.dtype(np_dtype).itemsize:
            np_dtype = stored if np.dtype(np_dtype).kind == np.dtype(stored).kind else np_dtype
        count = int(np.prod(shape, dtype=np.int64))
        nbytes = count * np.dtype(np_dtype).itemsize
        if nbytes > size or data_offset + size > file_size:
            raise BlobError(f"{self.path(file_name)}: blob at {offset} holds {size} bytes, {nbytes} needed")
        if nbytes <= self.small:
            data = os.pread(fd, nbytes, data_offset)
            return np.frombuffer(data, dtype=np_dtype, count=count).reshape(shape)
        return np.frombuffer(self._map(file_name), dtype=np_dtype, count=count, offset=data_offset).reshape(shape)

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
