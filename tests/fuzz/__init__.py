"""Seeded, deterministic fuzzing of the `mlopt` command line with malformed packages and hostile file layouts.

A package (not a bare folder of modules) so that this folder's conftest and helpers get their own module names
(`fuzz.conftest`, `fuzz.runner`, ...) and never shadow `tests/conftest.py`, which other tests import as `conftest`.

Fast set (default): `python -m pytest tests/fuzz`. Full set: `python -m pytest tests/fuzz --fuzz=full`, or
`MLOPT_FUZZ=full python -m pytest` (the option exists only when tests/fuzz is named on the command line).
"""
