"""How every analysis gets its program: read from the package and checked well formed (graph/validate.py: values
defined before use, sane types, op signatures) before anything looks at it, so `verify`, `audit` and `lint` refuse
a malformed program with the same one line as `optimize` and `inspect`."""

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
