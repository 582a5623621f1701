"""Conversion-time integration with coremltools. For each rule of a rule set (default: the registry, read when
used) it registers, in coremltools' registries:

- the fused op `mlopt_<rule>` (ops.py, iOS15 and iOS17 opsets),
- the passes `mlopt::fuse_<rule>` and `mlopt::lower_<rule>` (passes.py),

and provides `pass_pipeline()` (a ct.PassPipeline with them in place) and `convert()` (ct.convert with them), both
taking `rules=`. Importing it registers the registry's rules as they are then, for pipelines built by name;
`pass_pipeline` registers the rules it is given. This imports coremltools; the `mlopt` command line never imports
this package.
"""

from . import ops, passes
from .passes import fuse_pass_name, lower_pass_name, register
from .pipeline import convert, pass_pipeline
from ..rules import rule_set

for _rule in rule_set():
    register(_rule)

__all__ = ["convert", "fuse_pass_name", "lower_pass_name", "ops", "pass_pipeline", "passes", "register"]
