"""Read an `.mlpackage` into a `ModelPackage`: its folder, the root model file and the parsed spec.

Every way the input can be unusable ends here in a `BadInputError` naming the file, so later layers can assume an
ML program with known opsets. Nothing is written and the weight file is never opened.
"""

import os
from dataclasses import dataclass

from ..errors import BadInputError
from .manifest import root_model_path

# Function.opset -> the deployment target whose dtype rules apply (coreml-facts.md, "Opsets and spec versions").
KNOWN_OPSETS = {"CoreML5": "iOS15", "CoreML6": "iOS16", "CoreML7": "iOS17", "CoreML8": "iOS18", "CoreML9": "iOS26"}


@dataclass
class ModelPackage:
    path: str  # the .mlpackage folder
    model_path: str  # the root model file inside it
    spec: object  # CoreML.Specification.Model (None until load_spec)

    @property
    def model_relpath(self):
        return os.path.relpath(self.model_path, self.path)


def read_package(path):
    """Parse the package at `path`, check that it holds an ML program mlopt can work on, and return it."""
    return load_spec(locate_package(path))


def locate_package(path):
    """The package at `path` with its root model file found through the Manifest, spec not yet parsed: enough to
    start copying the weights while the spec is read."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise BadInputError(path, "no such file or directory")
    if not os.path.isdir(path):
        if path.endswith(".mlmodel"):
            raise BadInputError(path, "is a single .mlmodel file; mlopt works on .mlpackage folders (ML programs)")
        raise BadInputError(path, "not an .mlpackage (a file, not a folder)")
    return ModelPackage(path=path, model_path=root_model_path(path), spec=None)


def load_spec(package):
    """Parse and check the package's root model; returns the package with `spec` set."""
    package.spec = parse_spec(package.model_path)
    check_ml_program(package.spec, package.model_path)
    return package


def parse_spec(model_path):
    # protobuf is imported here, not at start-up: the copy of the weights starts before (see mlopt/api.py)
    from google.protobuf.message import DecodeError

    from .proto import Model_pb2

    if not os.path.isfile(model_path):
        raise BadInputError(model_path, "root model file named in Manifest.json is missing")
    spec = Model_pb2.Model()
    try:
        with open(model_path, "rb") as f:
            spec.ParseFromString(f.read())
    except (DecodeError, RuntimeError, ValueError) as e:
        raise BadInputError(model_path, f"not a valid Core ML model protobuf ({e})") from None
    if spec.WhichOneof("Type") is None or spec.specificationVersion == 0:
        raise BadInputError(model_path, "not a valid Core ML model protobuf (no model type or version)")
    return spec


def check_ml_program(spec, model_path):
    kind = spec.WhichOneof("Type")
    if kind != "mlProgram":
        raise BadInputError(
            model_path,
            f"is a {kind} model (specification version {spec.specificationVersion}), not an ML program; "
            "mlopt rewrites ML programs only (iOS15+), there is nothing to do",
        )
    for name, function in spec.mlProgram.functions.items():
        if function.opset not in KNOWN_OPSETS:
            raise BadInputError(model_path, f"function '{name}' uses opset '{function.opset}', which mlopt does not support")
        if function.opset not in function.block_specializations:
            raise BadInputError(model_path, f"function '{name}' has no body for its opset '{function.opset}'")
