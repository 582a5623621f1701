"""Read-only analyses of packages, above numerics: `verify` (two packages run on the same inputs and compared).
They read packages and run the interpreter; they never rewrite a program."""
