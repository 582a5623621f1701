"""Numerics: a numpy MIL interpreter, input generation, comparison, the rewrite self-check and model verification."""
