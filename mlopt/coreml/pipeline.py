"""A coremltools PassPipeline with every rule's passes in place, and `mlopt.convert`, ct.convert with them."""

import coremltools as ct

from ..compute_units import compute_units_name
from ..rules import rule_set
from .passes import fuse_pass_name, lower_pass_name, register

FUSE_AFTER = "common::fuse_reduce_mean"  # reduce_sum * 1/N is a reduce_mean by then
LOWER_AFTER = "common::add_fp16_cast"  # dtypes are final after it; cleanup passes follow


def pass_pipeline(base=None, compute_units="CPU_AND_NE", rules=None):
    """A copy of `base` (default: ct.PassPipeline.DEFAULT) with each rule's fusion and lowering inserted, all set
    to `compute_units`. The fusions go after common::fuse_reduce_mean (or first), the lowerings after
    common::add_fp16_cast (or last, followed by dead-code elimination). `rules`: the rule set (default: the
    registry, read now); each is registered with coremltools here."""
    rules = rule_set(rules)
    for rule in rules:
        if rule.saved_programs_only:
            raise ValueError(f"the {rule.name} rule rewrites saved programs only (mlopt optimize); it has no conversion-time passes")
    for rule in rules:
        register(rule)
    base = base or ct.PassPipeline.DEFAULT
    fuses, lowers = [fuse_pass_name(r) for r in rules], [lower_pass_name(r) for r in rules]
    pipeline = ct.PassPipeline(pass_names=[p for p in base.passes if p not in fuses + lowers], pipeline_name=base.pipeline_name)
    pipeline.set_options_by_another_pipeline(base)
    passes = pipeline.passes
    fuse_at = passes.index(FUSE_AFTER) + 1 if FUSE_AFTER in passes else 0
    for k, name in enumerate(fuses):
        pipeline.insert_pass(fuse_at + k, name)
    passes = pipeline.passes
    if LOWER_AFTER in passes and passes.index(LOWER_AFTER) > fuse_at:
        at = passes.index(LOWER_AFTER) + 1
        for k, name in enumerate(lowers):
            pipeline.insert_pass(at + k, name)
    else:
        for name in lowers:
            pipeline.append_pass(name)
        pipeline.append_pass("common::dead_code_elimination")
    units = compute_units_name(compute_units) if compute_units is not None else None
    for name in fuses + lowers:
        pipeline.set_options(name, {"compute_units": units})
    return pipeline


def convert(*args, rules=None, **kwargs):
    """`coremltools.convert`, same signature (and `rules=`, the rule set, default the registry); for an ML
    program, every chain a rule pays for at `compute_units` is rewritten by mlopt's passes (rms_norm: CPU_AND_NE
    only). Without compute_units, or when no rule pays for them, it converts exactly as ct.convert does."""
    rules = rule_set(rules)
    units = kwargs.get("compute_units")
    if units is not None and kwargs.get("convert_to") in (None, "mlprogram"):
        name = compute_units_name(units)
        if any(rule.applies(name) for rule in rules):
            kwargs["pass_pipeline"] = pass_pipeline(kwargs.get("pass_pipeline"), name, rules)
    return ct.convert(*args, **kwargs)
