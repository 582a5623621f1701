"""Matching machinery every rule's pattern uses: walks across casts (walk.py), the trace that records what a
match attempt walked and why it stopped (trace.py), and the match status types (status.py). The patterns
themselves live with their rules (rules/)."""
