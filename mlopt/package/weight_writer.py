"""The one weight-file writer: every rule that changes a weight stores its result through it.

A rewrite that adds a weight does not write anything while it is planned. It registers a *new blob* with the
run's `NewBlobs` and gets a provisional offset (past the end of the weight file, so it names no existing blob);
its `const` op points there. A new blob is described by where its bytes come from, never by a copy of them:

- `add_slice`: a slice along one axis of an existing blob (a wide weight split into chunks) - byte ranges of the
  old blob, copied through the file system like unchanged blobs;
- `add_scaled`: an existing blob times a factor (power-of-two scaling for fp16 headroom), streamed through a
  bounded window (WINDOW elements at a time), computed in float64 and rounded to the blob's dtype once;
- `add_array`: an array the rule computed (small: a bias, a LUT).

Until the package is written, `NewBlobs.reader()` serves the new blobs exactly as they will be written (the
proof reads them through it) and every other blob from the input's BlobReader. Nothing is written for a rewrite
that is rolled back: the writer keeps only the blobs the final program refers to.

`write(spec, file_name, fd)` writes a weight file anew (MILBlob v2: a 64-byte header - blob count, version 2 -
then per blob a 64-byte metadata record - sentinel 0xDEADBEEF, dtype code, size, data offset - and the data,
each record 64-byte aligned, as coremltools' blob writer lays them out) and remaps every offset of that file in
the program: blobs the program still refers to are copied by byte range (os.copy_file_range: in-kernel, and
cloned where the file system shares extents; no copy of an unchanged weight passes through Python's memory),
new blobs are appended, and blobs nothing refers to any more (the weight a split replaced) are dropped. The
same input gives the same bytes. Only files that receive a new blob are rewritten (`files_to_write`); the
others are copied whole as before.

`write(..., in_place=True)` updates a private copy of the input's file (the package writer's, never the input's
own) to the same bytes: every blob before the first dropped one keeps its offset, so nothing of it is written
again; an LM head split at the end of a 2 GB file costs the rows after its first chunk, not the file.
"""

import math
import os
import struct
from dataclasses import dataclass, field

import numpy as np

from .weights import BLOB_BITS, BLOB_DTYPES, HEADER, SENTINEL, VERSION, blob_values, unpack_bits

ALIGN = 64
WINDOW = 1 << 20  # elements of a streamed transform in memory at once
CODES = {np.dtype(v): k for k, v in BLOB_DTYPES.items()}  # numpy dtype -> blob dtype code


def _aligned(n):
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass
class NewBlob:
    file_name: str  # the weight file it is written into (a const's `fileName`)
    offset: int  # provisional offset the program refers to until the file is written
    code: int  # blob dtype code (package/weights.py)
    nbytes: int
    ranges: list = field(default_factory=list)  # [(absolute byte offset in file_name, nbytes)] copied as they are
    scaled: tuple = None  # (source offset, numpy dtype, element count, factor): streamed source * factor
    array: np.ndarray = None  # bytes computed by the rule


class NewBlobs:
    """The blobs a run's rewrites add to the weight files of one package read through `reader` (a BlobReader)."""

    def __init__(self, reader):
        self.reader = reader
        self.blobs = {}  # (file_name, provisional offset) -> NewBlob
        self._ends = {}  # file_name -> next provisional offset

    def _next(self, file_name, nbytes):
        if file_name not in self._ends:
            _, size = self.reader.open_file(file_name)
            self._ends[file_name] = _aligned(size)
        offset = self._ends[file_name]
        self._ends[file_name] = _aligned(offset + HEADER + nbytes)
        return offset

    def _source(self, file_name, offset, np_dtype, shape):
        """(numpy dtype, element count, absolute data offset, code) of an existing or new blob."""
        new = self.blobs.get((file_name, offset))
        if new is not None:
            raise ValueError("a new blob cannot be the source of another one; derive both from the stored weight")
        return self.reader.check(file_name, offset, np_dtype, shape)

    # -- registering -----------------------------------------------------------------------------------------------
    def add_array(self, file_name, array):
        """A new blob holding `array` (a whole-byte dtype); returns its provisional offset."""
        array = np.ascontiguousarray(array)
        code = CODES.get(array.dtype)
        if code is None:
            raise ValueError(f"a weight file cannot store {array.dtype} values")
        blob = NewBlob(file_name, self._next(file_name, array.nbytes), code, array.nbytes, array=array)
        self.blobs[(file_name, blob.offset)] = blob
        return blob.offset

    def add_slice(self, file_name, offset, np_dtype, shape, axis, begin, end):
        """A new blob holding source[..., begin:end, ...] along `axis` of the blob at `offset` (read as `np_dtype`
        and `shape`; np.uint8 for a sub-byte blob); returns its provisional offset. The bytes are byte ranges of
        the source: a sub-byte blob (palettized or 4-bit indices) can be sliced only where every run starts and
        ends on a byte (splitting along the first axis, rows of whole bytes); ValueError otherwise."""
        shape = [int(d) for d in shape]
        if not 0 <= begin < end <= shape[axis]:
            raise ValueError(f"slice {begin}:{end} is outside axis {axis} of a weight of shape {shape}")
        _, _, data, code = self._source(file_name, offset, np_dtype, shape)
        bits = BLOB_BITS[code]
        outer, inner = math.prod(shape[:axis]), math.prod(shape[axis + 1 :])
        run_bits, start_bits, row_bits = (end - begin) * inner * bits, begin * inner * bits, shape[axis] * inner * bits
        if run_bits % 8 or start_bits % 8 or (outer > 1 and row_bits % 8):
            raise ValueError(f"a {bits}-bit weight cannot be split at element {begin * inner} along axis {axis}: not on a byte")
        ranges = [(data + (k * row_bits + start_bits) // 8, run_bits // 8) for k in range(outer)]
        nbytes = sum(n for _, n in ranges)
        blob = NewBlob(file_name, self._next(file_name, nbytes), code, nbytes, ranges=_merged(ranges))
        self.blobs[(file_name, blob.offset)] = blob
        return blob.offset

    def add_scaled(self, file_name, offset, np_dtype, shape, factor):
        """A new blob holding the float blob at `offset` times `factor`, rounded once to its dtype; returns its
        provisional offset."""
        np_dtype, count, _, code = self._source(file_name, offset, np_dtype, shape)
        if np.dtype(np_dtype).kind != "f":
            raise ValueError(f"only a float weight can be scaled, not {np.dtype(np_dtype).name}")
        nbytes = count * np.dtype(np_dtype).itemsize
        blob = NewBlob(file_name, self._next(file_name, nbytes), code, nbytes,
                       scaled=(offset, np.dtype(np_dtype), [int(d) for d in shape], float(factor)))
        self.blobs[(file_name, blob.offset)] = blob
        return blob.offset

    # -- reading ---------------------------------------------------------------------------------------------------
    def reader_overlay(self):
        """A reader with BlobReader's read methods serving new blobs as they will be written."""
        return _OverlayReader(self)

    def _chunks(self, blob):
        """The new blob's bytes, a bounded window at a time."""
        if blob.array is not None:
            yield memoryview(blob.array.reshape(-1).view(np.uint8))
            return
        if blob.ranges:
            fd, _ = self.reader.open_file(blob.file_name)
            for start, n in blob.ranges:
                for at in range(start, start + n, WINDOW):
                    yield os.pread(fd, min(WINDOW, start + n - at), at)
            return
        offset, np_dtype, shape, factor = blob.scaled
        total = math.prod(shape)
        for start in range(0, total, WINDOW):
            window = self.reader.read_window(blob.file_name, offset, np_dtype, shape, start, WINDOW)
            yield (window.astype(np.float64) * factor).astype(np_dtype).tobytes()

    def window(self, file_name, offset, np_dtype, shape, start, count):
        """Elements `start` .. `start + count` (flat, C order) of a new blob as it will be written, reading only
        their bytes: what a streamed evaluation of a large new weight reads, a window at a time."""
        blob = self.blobs[(file_name, offset)]
        stored = BLOB_DTYPES.get(blob.code)
        dtype = np.dtype(stored if stored is not None else np_dtype)
        start, stop = max(0, int(start)), min(math.prod(shape), int(start) + int(count))
        if stop <= start:
            return np.empty(0, dtype)
        if blob.array is not None:
            return np.ascontiguousarray(blob.array).reshape(-1).view(np.uint8).view(dtype)[start:stop].copy()
        if blob.ranges:
            low, high = start * dtype.itemsize, stop * dtype.itemsize
            fd, _ = self.reader.open_file(blob.file_name)
            parts, at = [], 0
            for source, n in blob.ranges:
                a, b = max(low, at), min(high, at + n)
                if a < b:
                    parts.append(os.pread(fd, b - a, source + a - at))
                at += n
                if at >= high:
                    break
            return np.frombuffer(b"".join(parts), dtype).copy()
        source, src_dtype, src_shape, factor = blob.scaled
        window = self.reader.read_window(blob.file_name, source, src_dtype, src_shape, start, stop - start)
        return (window.astype(np.float64) * factor).astype(src_dtype)

    def value(self, file_name, offset, np_dtype, shape):
        blob = self.blobs[(file_name, offset)]
        data = b"".join(bytes(c) for c in self._chunks(blob))
        return np.frombuffer(data, np.uint8).view(np_dtype)[: math.prod(shape)].reshape(shape)

    # -- writing ---------------------------------------------------------------------------------------------------
    def files_to_write(self, spec):
        """The weight files the final program refers to a new blob in (those must be rewritten)."""
        return sorted({v.blobFileValue.fileName for f in spec.mlProgram.functions.values() for v in blob_values(f)
                       if (v.blobFileValue.fileName, v.blobFileValue.offset) in self.blobs})

    def write(self, spec, file_name, fd, in_place=False):
        """Write the weight file `file_name` into `fd` and remap the program's offsets into it. Returns the copy
        methods used. `fd` is an empty file, or with `in_place` a byte-for-byte copy of the input's file (one
        this run made: never the input's own): then only what differs from that copy is written - a blob whose
        bytes stay where they were is not touched, and one whose offset is unchanged costs a 64-byte comparison -
        and the file is cut to its new length. Both give the same bytes."""
        values = [v for f in spec.mlProgram.functions.values() for v in blob_values(f) if v.blobFileValue.fileName == file_name]
        offsets = sorted({v.blobFileValue.offset for v in values}, key=lambda o: ((file_name, o) in self.blobs, o))
        src_fd, src_size = self.reader.open_file(file_name)
        if in_place and os.fstat(fd).st_size != src_size:  # not a whole copy after all: write everything
            os.ftruncate(fd, 0)
            in_place = False
        out = _Target(fd, in_place)
        out.put(struct.pack("<II", len(offsets), VERSION).ljust(HEADER, b"\0"), 0)
        position, moved, methods = HEADER, {}, set()
        for old in offsets:
            new = self.blobs.get((file_name, old))
            if new is None:
                record = os.pread(src_fd, HEADER, old)
                sentinel, code, nbytes, data = struct.unpack_from("<IIQQ", record)
                if sentinel != SENTINEL:
                    raise ValueError(f"no blob at offset {old}")
                ranges, reserved = [(data, nbytes)], record[24:]
            else:
                code, nbytes, ranges, reserved = new.code, new.nbytes, new.ranges, b"\0" * (HEADER - 24)
            data_at = position + HEADER
            out.put(struct.pack("<IIQQ", SENTINEL, code, nbytes, data_at) + reserved, position)
            if new is None or new.ranges:
                at = data_at
                for start, n in ranges:
                    methods.update(out.copy(src_fd, start, at, n))
                    at += n
            else:
                at = data_at
                for chunk in self._chunks(new):
                    _write_all(fd, chunk, at)
                    at += len(chunk)
                methods.add("streamed")
            moved[old] = position
            position = _aligned(data_at + nbytes)
            out.pad(data_at + nbytes, position)
        os.ftruncate(fd, max(position, HEADER))
        for v in values:
            v.blobFileValue.offset = moved[v.blobFileValue.offset]
        return methods


class _Target:
    """The weight file being written, with what an in-place update may leave as it is. Every byte of the new file
    is covered once, in increasing order - the header, then per blob its record, its data, the zeros up to the next
    64-byte boundary - so a byte not yet written still holds the copy's (the input's) byte at that position: data
    copied to where it already is, and a record or padding equal to what is there, need no write."""

    def __init__(self, fd, in_place):
        self.fd = fd
        self.in_place = in_place

    def put(self, data, offset):
        if not (self.in_place and os.pread(self.fd, len(data), offset) == data):
            _write_all(self.fd, data, offset)

    def copy(self, src_fd, start, at, n):
        """Bytes `start`..`start + n` of the input's file to `at`; returns the methods used (none: already there)."""
        if self.in_place and start == at:
            return ()
        return (_copy_range(src_fd, self.fd, start, at, n),)

    def pad(self, end, aligned):
        """Zeros between a blob's end and the next record: holes in a new file, written over an old one's bytes."""
        if self.in_place and aligned > end:
            self.put(b"\0" * (aligned - end), end)


class _OverlayReader:
    """BlobReader's reading methods, new blobs first."""

    def __init__(self, new_blobs):
        self._new = new_blobs
        self._base = new_blobs.reader

    def read(self, file_name, offset, np_dtype, shape, copy=False, widen_to=None):
        if (file_name, offset) in self._new.blobs:
            blob = self._new.blobs[(file_name, offset)]
            stored = BLOB_DTYPES.get(blob.code)
            value = self._new.value(file_name, offset, stored if stored is not None else np_dtype, shape)
            return value if widen_to is None else value.astype(widen_to)
        return self._base.read(file_name, offset, np_dtype, shape, copy=copy, widen_to=widen_to)

    def read_window(self, file_name, offset, np_dtype, shape, start, count):
        if (file_name, offset) in self._new.blobs:
            return self._new.window(file_name, offset, np_dtype, shape, start, count)
        return self._base.read_window(file_name, offset, np_dtype, shape, start, count)

    def read_packed(self, file_name, offset, bits, signed, shape):
        if (file_name, offset) in self._new.blobs:
            blob = self._new.blobs[(file_name, offset)]
            packed = b"".join(bytes(c) for c in self._new._chunks(blob))
            return unpack_bits(packed, bits, signed, math.prod(shape)).reshape(shape)
        return self._base.read_packed(file_name, offset, bits, signed, shape)

    def __getattr__(self, name):  # check, path, close, ...: the input's reader
        return getattr(self._base, name)


def _merged(ranges):
    """Adjacent byte ranges as one (a slice along the first axis is one range)."""
    out = []
    for start, n in ranges:
        if out and out[-1][0] + out[-1][1] == start:
            out[-1] = (out[-1][0], out[-1][1] + n)
        else:
            out.append((start, n))
    return out


def _write_all(fd, data, offset):
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _copy_range(src_fd, dst_fd, src_offset, dst_offset, nbytes):
    """Copy `nbytes` between files by offset: copy_file_range (kernel; reflinks where supported), else
    pread/pwrite in bounded chunks. Returns the method used."""
    done = 0
    if hasattr(os, "copy_file_range"):
        try:
            while done < nbytes:
                n = os.copy_file_range(src_fd, dst_fd, nbytes - done, src_offset + done, dst_offset + done)
                if n == 0:
                    raise ValueError(f"weight file ends {nbytes - done} bytes early at {src_offset + done}")
                done += n
            return "copy_file_range"
        except OSError:
            pass  # another file system, or not supported: copy the rest by hand
    while done < nbytes:
        chunk = os.pread(src_fd, min(WINDOW, nbytes - done), src_offset + done)
        if not chunk:
            raise ValueError(f"weight file ends {nbytes - done} bytes early at {src_offset + done}")
        _write_all(dst_fd, chunk, dst_offset + done)
        done += len(chunk)
    return "pread/pwrite"
