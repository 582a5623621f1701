"""Conversion-time integration with coremltools. Importing it registers, in coremltools' registries, for each
rule of rules/:

- the fused op `mlopt_<rule>` (ops.py, iOS15 and iOS17 opsets),
- the passes `mlopt::fuse_<rule>` and `mlopt::lower_<rule>` (passes.py),

and provides `pass_pipeline()` (a ct.PassPipeline with them in place) and `convert()` (ct.convert with them).
This imports coremltools; the `mlopt` command line never imports this package.
"""

from . import ops, passes  # noqa: F401  (registration)
from .passes import fuse_pass_name, lower_pass_name
from .pipeline import convert, pass_pipeline

__all__ = ["convert", "fuse_pass_name", "lower_pass_name", "pass_pipeline"]
