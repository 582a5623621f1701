"""The weight-file writer against a plain copy: rewriting a weight file that keeps every blob and gains one small
new blob (what a rule that changes one weight causes) should cost about what copying the file costs, and hold no
unchanged weight in Python's memory.

    python bench/bench_weight_writer.py                # 512 MB of fp16 blobs
    python bench/bench_weight_writer.py --mb 64        # a quick run

Writes a weight file with coremltools' own blob writer (BLOBS blobs), then, each `--runs` times, in a temporary
folder on the same file system: a plain copy of the file (os.copy_file_range, as the package writer copies), and
`NewBlobs.write` keeping every blob and appending one scaled copy of the smallest. Reports the median wall time
of each, the copy methods used, and the process's peak RSS growth over the run (Linux ru_maxrss).
"""

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from coremltools import libmilstoragepython  # noqa: E402

from mlopt.graph.dtypes import FLOAT16  # noqa: E402
from mlopt.package.copy import copy_into  # noqa: E402
from mlopt.package.proto import Model_pb2  # noqa: E402
from mlopt.package.weight_writer import NewBlobs  # noqa: E402
from mlopt.package.weights import BlobReader  # noqa: E402
from mlopt.rewrites.spec_builder import tensor_type  # noqa: E402

FILE = "@model_path/weights/weight.bin"
BLOBS = 16


def make_weights(folder, megabytes):
    os.makedirs(os.path.join(folder, "weights"))
    writer = libmilstoragepython._BlobStorageWriter(os.path.join(folder, "weights", "weight.bin"))
    per_blob = megabytes * (1 << 20) // 2 // BLOBS
    rng = np.random.default_rng(0)
    offsets = [writer.write_fp16_data(rng.integers(0, 0x3C00, per_blob, dtype=np.uint16)) for _ in range(BLOBS - 1)]
    offsets.append(writer.write_fp16_data(rng.integers(0, 0x3C00, 1024, dtype=np.uint16)))  # a small one
    del writer
    return offsets, per_blob


def program(consts):
    spec = Model_pb2.Model()
    block = spec.mlProgram.functions["main"].block_specializations["CoreML7"]
    spec.mlProgram.functions["main"].opset = "CoreML7"
    for offset, shape in consts:
        op = block.operations.add()
        op.type = "const"
        value = op.attributes["val"]
        value.type.CopyFrom(tensor_type(FLOAT16, shape))
        value.blobFileValue.fileName = FILE
        value.blobFileValue.offset = offset
    return spec


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=512)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(__file__))) as tmp:
        offsets, per_blob = make_weights(tmp, args.mb)
        source = os.path.join(tmp, "weights", "weight.bin")
        size = os.path.getsize(source) / (1 << 20)
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        copies, writes, methods = [], [], set()
        for run in range(args.runs):
            start = time.perf_counter()
            src = os.open(source, os.O_RDONLY)
            dir_fd = os.open(tmp, os.O_RDONLY)
            try:
                methods.add("copy: " + copy_into(src, dir_fd, f"copy{run}.bin"))
            finally:
                os.close(src)
                os.close(dir_fd)
            copies.append(time.perf_counter() - start)
            os.unlink(os.path.join(tmp, f"copy{run}.bin"))

            start = time.perf_counter()
            reader = BlobReader(tmp)
            new = NewBlobs(reader)
            scaled = new.add_scaled(FILE, offsets[-1], np.float16, [1024], 2.0)
            spec = program([(o, [per_blob]) for o in offsets[:-1]] + [(offsets[-1], [1024]), (scaled, [1024])])
            out = os.open(os.path.join(tmp, f"written{run}.bin"), os.O_RDWR | os.O_CREAT | os.O_EXCL)
            try:
                methods.update("writer: " + m for m in new.write(spec, FILE, out))
                os.fsync(out)
            finally:
                os.close(out)
                reader.close()
            writes.append(time.perf_counter() - start)
            os.unlink(os.path.join(tmp, f"written{run}.bin"))
        grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    print(f"weight file: {size:,.0f} MB in {BLOBS} blobs; median of {args.runs} runs")
    print("| step | seconds | MB/s |")
    print("|---|---|---|")
    for name, times in (("plain copy (package writer)", copies), ("NewBlobs.write: keep all, append one", writes)):
        t = statistics.median(times)
        print(f"| {name} | {t:.3f} | {size / t:,.0f} |")
    print(f"methods: {', '.join(sorted(methods))}")
    print(f"peak RSS growth over the runs: {grew:.0f} MB")


if __name__ == "__main__":
    main()
