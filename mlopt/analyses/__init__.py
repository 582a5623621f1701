"""Read-only analyses of packages and programs, above numerics: they run or read a model and report, they never
rewrite one.

- `verify` (verify.py) runs two packages on the same inputs and judges both against float64.
- `audit` (audit.py) runs a program as an fp16 device would and in float64 in one walk and says where it stops
  being fp16-safe; its static checks are in hazards.py, its per-op measures in audit_walk.py, its report in
  audit_report.py. Inputs, streaming and the report conventions are shared with `verify` (numerics/feeds.py,
  `Evaluator.steps`, report.py).
- `lint` (lint.py) checks every op against the Neural Engine limits the community has measured (`ane_limits.py`
  holds the table and its sources).
"""
