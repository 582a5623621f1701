"""A coremltools PassPipeline with mlopt's passes in place, and `mlopt.convert`, ct.convert with them."""

import coremltools as ct

from ..compute_units import REWRITING_UNITS, compute_units_name
from .passes import FUSE, LOWER

FUSE_AFTER = "common::fuse_reduce_mean"  # reduce_sum * 1/N is a reduce_mean by then
LOWER_AFTER = "common::add_fp16_cast"  # dtypes are final after it; cleanup passes follow


def pass_pipeline(base=None, compute_units="CPU_AND_NE"):
    """A copy of `base` (default: ct.PassPipeline.DEFAULT) with the fusion and the lowering inserted, both set to
    `compute_units`. The fusion goes after common::fuse_reduce_mean (or first), the lowering after
    common::add_fp16_cast (or last, followed by dead-code elimination)."""
    base = base or ct.PassPipeline.DEFAULT
    pipeline = ct.PassPipeline(pass_names=[p for p in base.passes if p not in (FUSE, LOWER)], pipeline_name=base.pipeline_name)
    pipeline.set_options_by_another_pipeline(base)
    passes = pipeline.passes
    fuse_at = passes.index(FUSE_AFTER) + 1 if FUSE_AFTER in passes else 0
    pipeline.insert_pass(fuse_at, FUSE)
    passes = pipeline.passes
    if LOWER_AFTER in passes and passes.index(LOWER_AFTER) > fuse_at:
        pipeline.insert_pass(passes.index(LOWER_AFTER) + 1, LOWER)
    else:
        pipeline.append_pass(LOWER)
        pipeline.append_pass("common::dead_code_elimination")
    units = compute_units_name(compute_units) if compute_units is not None else None
    for name in (FUSE, LOWER):
        pipeline.set_options(name, {"compute_units": units})
    return pipeline


def convert(*args, **kwargs):
    """`coremltools.convert`, same signature; with compute_units=CPU_AND_NE (an ML program), every RMSNorm is
    converted to the LayerNorm trick by mlopt's passes. Any other setting converts exactly as ct.convert does."""
    units = kwargs.get("compute_units")
    if (
        units is not None
        and compute_units_name(units) in REWRITING_UNITS
        and kwargs.get("convert_to") in (None, "mlprogram")
    ):
        kwargs["pass_pipeline"] = pass_pipeline(kwargs.get("pass_pipeline"), "CPU_AND_NE")
    return ct.convert(*args, **kwargs)
