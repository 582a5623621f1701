"""Conversion-time integration with coremltools. Importing it registers, in coremltools' registries:

- the op `ane_rms_norm` (ops.py, iOS15 and iOS17 opsets),
- the passes `mlopt::fuse_rms_norm` and `mlopt::lower_ane_rms_norm_to_layer_norm` (passes.py),

and provides `pass_pipeline()` (a ct.PassPipeline with both in place) and `convert()` (ct.convert with them when
compute_units is CPU_AND_NE). This imports coremltools; the `mlopt` command line never imports this package.
"""

from . import ops, passes  # noqa: F401  (registration)
from .passes import FUSE, LOWER
from .pipeline import convert, pass_pipeline

__all__ = ["FUSE", "LOWER", "convert", "pass_pipeline"]
