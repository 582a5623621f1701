"""Package I/O: read an `.mlpackage` (Manifest, model spec) confined to its folder, and write a new one atomically,
weights copied as bytes."""

from .reader import ModelPackage, load_spec, locate_package, read_package
from .writer import PackageWriter, write_package

__all__ = ["ModelPackage", "PackageWriter", "load_spec", "locate_package", "read_package", "write_package"]
