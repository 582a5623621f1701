"""Graph view: a read-only index over an ML program's functions (producers, consumers, types, const values)."""

from .interface import Use
from .spec_graph import SpecGraph

__all__ = ["SpecGraph", "Use"]
