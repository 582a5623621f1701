"""Which chains and functions a run may rewrite. Light (no numpy): the CLI builds it before the copy starts."""

from dataclasses import dataclass


@dataclass
class Selection:
    """Which chains and functions to touch (`--only`/`--skip` by a rule's name or a chain's anchor op name,
    `--function`), like ONNX Runtime's `disable_*_fusion` and onnxsim's `--skip-*`. The default selects
    everything."""

    only: frozenset = None  # rule names and anchor op names to rewrite; None: all
    skip: frozenset = frozenset()  # rule names and anchor op names to leave alone
    functions: frozenset = None  # function names to optimize; None: all

    def chain_reason(self, anchor, function=None, rule=None):
        if self.functions is not None and function is not None and function not in self.functions:
            return "not selected (--function)"
        if anchor in self.skip or rule in self.skip:
            return "skipped (--skip)"
        if self.only is not None and anchor not in self.only and rule not in self.only:
            return "not selected (--only)"
        return None

    @classmethod
    def of(cls, only=None, skip=(), functions=None):
        """From the Python API's arguments: a name or an iterable of names; None means all."""
        return cls(
            only=None if only is None else _names(only),
            skip=_names(skip or ()),
            functions=None if functions is None else _names(functions),
        )


def _names(value):
    """A single name is one name, not its letters."""
    return frozenset([value] if isinstance(value, str) else value)
