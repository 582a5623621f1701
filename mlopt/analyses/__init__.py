"""Read-only analyses of a saved program, above `numerics/` and below `cli/`: they run or read a model and report,
never write one.

`audit` (audit.py) runs a program as an fp16 device would and in float64 in one walk and says where it stops
being fp16-safe; its static checks are in hazards.py, its per-op measures in audit_walk.py, its report in
audit_report.py. Inputs, streaming and the report conventions are shared with `verify` (numerics/feeds.py,
`Evaluator.steps`, report.py).
"""
