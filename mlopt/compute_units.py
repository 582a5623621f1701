"""Compute-unit settings: which ones rewrite, and what the report says for the others. Light: the CLI imports it
at start-up."""

COMPUTE_UNITS = ("CPU_AND_NE", "ALL", "CPU_ONLY", "CPU_AND_GPU")
REWRITING_UNITS = ("CPU_AND_NE",)


def compute_units_name(compute_units):
    """'CPU_AND_NE' etc. from a string in any case or a `coremltools.ComputeUnit` (anything with that `.name`)."""
    name = getattr(compute_units, "name", compute_units)
    name = name.upper() if isinstance(name, str) else name
    if name not in COMPUTE_UNITS:
        raise ValueError(f"unknown compute units {compute_units!r}; expected one of {', '.join(COMPUTE_UNITS)}")
    return name

