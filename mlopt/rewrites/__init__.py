"""Rewrites (the "lower" stage): replace matched chains in the spec, opset-aware, and clean up what died."""

from .apply import PlannedRewrite, apply_rewrites, plan_rewrites

__all__ = ["PlannedRewrite", "apply_rewrites", "plan_rewrites"]
