"""Rewrites (the "lower" stage): replace matched chains in the spec, opset-aware, and clean up what died."""

from .apply import rewrite_function

__all__ = ["rewrite_function"]
