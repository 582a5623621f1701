"""How every analysis gets its program: read from the package and checked well formed (graph/validate.py: values
defined before use, sane types, op signatures) before anything looks at it, so `verify`, `audit` and `lint` refuse
a malformed program with the same one line as `optimize` and `inspect`."""

from ..graph.stored_constants import check_blob_references
from ..graph.validate import validate_program
from ..package import read_package


def read_validated(path):
    """The package at `path` (a Package to close), its program validated. BadInputError names the file."""
    package = read_package(path)
    try:
        validate_program(package.spec, package.model_path)
    except BaseException:
        package.close()
        raise
    return package


def check_weights(package):
    """BadInputError if a blob the program names is not where weight.bin's header and bounds say (headers only:
    an analysis that reads no weight still refuses a damaged weight file, as every other command does)."""
    blobs = package.blob_reader()
    try:
        check_blob_references(package.spec, blobs)
    finally:
        blobs.close()
