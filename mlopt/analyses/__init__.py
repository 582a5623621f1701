"""Read-only analyses of a parsed ML program: they report, they never rewrite. `lint` checks every op against the
Neural Engine limits the community has measured (`ane_limits.py` holds the table and its sources)."""
