"""Package I/O: read an `.mlpackage` (Manifest, model spec) and write a new one atomically, weights copied as bytes."""

from .reader import ModelPackage, read_package
from .writer import write_package

__all__ = ["ModelPackage", "read_package", "write_package"]
