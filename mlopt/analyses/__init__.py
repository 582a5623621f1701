"""Read-only analyses of packages and programs, above numerics: they report, they never rewrite. `verify` runs
two packages on the same inputs and compares them; `lint` checks every op against the Neural Engine limits the
community has measured (`ane_limits.py` holds the table and its sources)."""
