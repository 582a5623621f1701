"""Patterns (the "fuse" stage): recognise RMSNorm chains in a FunctionView and explain the near-misses."""

from .rmsnorm import Candidate, RMSNormMatch, find_rms_norms

__all__ = ["Candidate", "RMSNormMatch", "find_rms_norms"]
