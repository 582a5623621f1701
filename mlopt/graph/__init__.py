"""Graph view: a read-only index over an ML program's functions (producers, consumers, types, const values)."""

from .view import FunctionView, Use, program_views

__all__ = ["FunctionView", "Use", "program_views"]
