"""Read an `.mlpackage` into a `ModelPackage`: its open folder, its files, the root model and the parsed spec.

Every way the package can be unusable ends here in a `BadInputError` naming the file, so later layers can assume an
ML program with known opsets; whether the program inside is well formed is checked by the graph layer
(graph/validate.py), which its readers call. Everything is read through `PackageTree` (tree.py):
nothing outside the package, no link, no special file. The weight file is not opened here.
"""

import os
from dataclasses import dataclass, field

from ..errors import BadInputError
from .manifest import root_model_relpath
from .tree import FILE, PackageTree, refuse_lfs_pointer

# Function.opset -> the deployment target whose dtype rules apply (docs/core-ml-format.md, "Opsets").
KNOWN_OPSETS = {"CoreML5": "iOS15", "CoreML6": "iOS16", "CoreML7": "iOS17", "CoreML8": "iOS18", "CoreML9": "iOS26"}
# Model.specificationVersion of ML programs: 6 (iOS15, the first with ML programs) .. 10 (iOS26).
SPEC_VERSIONS = range(6, 11)


@dataclass
class ModelPackage:
    path: str  # the .mlpackage folder, as the user named it
    tree: PackageTree  # the open folder every file is read through
    model_rel: str  # the root model file, relative to the package ("Data/com.apple.CoreML/model.mlmodel")
    entries: list = field(default_factory=list)  # every folder and regular file (tree.Entry), folders first
    spec: object = None  # CoreML.Specification.Model (None until load_spec)

    @property
    def model_path(self):
        """The root model file's path, for messages and for readers given a folder (BlobReader)."""
        return self.tree.show(self.model_rel)

    @property
    def model_dir_rel(self):
        """The folder holding the root model ("@model_path" of its weights), relative to the package."""
        return self.model_rel.rpartition("/")[0]

    def folder_identities(self):
        """(st_dev, st_ino) of the package folder and every folder inside it."""
        return [self.tree.identity] + [e.identity for e in self.entries if e.kind != FILE]

    def blob_reader(self):
        """A BlobReader for this package's weights, confined to the package."""
        from .weights import BlobReader

        return BlobReader(self.tree, self.model_dir_rel)

    def close(self):
        self.tree.close()


def read_package(path):
    """Parse the package at `path`, check that it holds an ML program mlopt can work on, and return it (open:
    the caller closes it)."""
    package = locate_package(path)
    try:
        return load_spec(package)
    except BaseException:
        package.close()
        raise


def locate_package(path):
    """The package at `path`, listed, with its root model found through the Manifest; spec not yet parsed:
    enough to start copying the weights while the spec is read."""
    path = os.fspath(path)
    if not os.path.lexists(path):
        raise BadInputError(path, "no such file or directory")
    if not os.path.isdir(path):
        if path.endswith(".mlmodel") and os.path.isfile(path):
            raise BadInputError(path, "is a single .mlmodel file; mlopt works on .mlpackage folders (ML programs)")
        if os.path.islink(path) and not os.path.exists(path):
            raise BadInputError(path, "is a symbolic link to nothing")
        raise BadInputError(path, "not an .mlpackage (a file, not a folder)")
    tree = PackageTree(path)
    try:
        model_rel = root_model_relpath(tree)
        entries = tree.scan()
        found = {e.rel: e.kind for e in entries}.get(model_rel)
        if found is None:
            raise BadInputError(tree.show(model_rel), "root model file named in Manifest.json is missing")
        if found != FILE:
            raise BadInputError(tree.show(model_rel), "root model named in Manifest.json is a folder, not a file")
        return ModelPackage(path=path, tree=tree, model_rel=model_rel, entries=entries)
    except BaseException:
        tree.close()
        raise


def load_spec(package):
    """Parse and check the package's root model; returns the package with `spec` set. The package stays open
    either way: a copy may be reading it (the caller closes it)."""
    package.spec = parse_spec(package.tree.read_bytes(package.model_rel, what="model file"), package.model_path)
    check_ml_program(package.spec, package.model_path)
    return package


def parse_spec(data, model_path):
    """A `CoreML.Specification.Model` from the bytes of a model file (`model_path` names it in errors)."""
    # protobuf is imported here, not at start-up: the copy of the weights starts before (see mlopt/api.py)
    from google.protobuf.message import DecodeError

    from .proto import Model_pb2

    refuse_lfs_pointer(data, model_path, "the model")
    spec = Model_pb2.Model()
    try:
        spec.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError, RecursionError) as e:
        raise BadInputError(model_path, f"not a valid Core ML model protobuf ({e})") from None
    if spec.WhichOneof("Type") is None or spec.specificationVersion == 0:
        raise BadInputError(model_path, "not a valid Core ML model protobuf (no model type or version)")
    return spec


def check_ml_program(spec, model_path):
    """BadInputError unless `spec` is an ML program of a known specification version and opsets, each function
    with a body for its opset. Whether the program is well formed (every value defined before it is read, no
    cycle, sane types and constants) is the graph layer's question (graph/validate.py), asked by whoever reads
    the program next (the engine, verify)."""
    kind = spec.WhichOneof("Type")
    version = spec.specificationVersion
    if kind != "mlProgram":
        raise BadInputError(
            model_path,
            f"is a {kind} model (specification version {version}), not an ML program; "
            "mlopt rewrites ML programs only (iOS15+), there is nothing to do",
        )
    if version not in SPEC_VERSIONS:
        raise BadInputError(
            model_path,
            f"specification version {version} is not one mlopt supports for ML programs "
            f"({SPEC_VERSIONS.start}-{SPEC_VERSIONS.stop - 1}: iOS15 to iOS26)",
        )
    for name, function in spec.mlProgram.functions.items():
        if function.opset not in KNOWN_OPSETS:
            raise BadInputError(model_path, f"function '{name}' uses opset '{function.opset}', which mlopt does not support")
        if function.opset not in function.block_specializations:
            raise BadInputError(model_path, f"function '{name}' has no body for its opset '{function.opset}'")
