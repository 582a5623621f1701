"""Softmax rows an attention mask hides entirely, in a float64 run: held to the uniform row of the float32 source.

A softmax row whose every float64 input is at or below MASKED is a row a mask hides entirely (a padded query
position; a left-padded sequence under a causal mask). The model's meaning there is the fp32 source model's: its
sentinel, float32's minimum, swallows the score added to it (-3.4e38 + s rounds back to -3.4e38: float32's
spacing there is 2**104), every entry is equal and the row is uniform; an fp16 device gives the same once the
sentinel is finite (-49152 + s rounds back to -49152 for |s| < 16). float64 alone keeps the scores under any
sentinel (-49152 + s, -1e9 + s) and gives softmax(s), which neither computes. The float64 runs that judge fp16
runs - `audit`'s (analyses/audit_walk.py) and `verify`'s yardstick (exact.run_float64) - set such a row to 1/n
per entry before anything reads it.

Why MASKED = -2**15: from there on fp16's spacing is 32, so an fp16 value there holds no score of magnitude below
16. Every sentinel in use (-inf, float32's minimum, -1e9, -65504, finite_mask's -49152) lies there and no score of
a working model does (it would be one bit from overflowing fp16). Apple's -1e4 (ml-ane-transformers) lies above:
a row it masks entirely is softmax(s) in float32 as in float64, and stays so.

Memory: one bool per row of each softmax input, kept only until the last softmax reading it has run.
"""

import numpy as np

MASKED = -(2.0**15)


class FullRows:
    """Tracks, along a stepped float64 run of `view`'s main block, which rows of each softmax input are masked
    entirely, and sets those rows of the softmax's output to the uniform row."""

    def __init__(self, view):
        self.view = view
        self.readers = {}  # softmax x -> [axis] of the softmaxes reading it
        for op in view.main.operations:
            x = view.arg(op, "x") if op.type == "softmax" else None
            if x is not None and x in view.types and view.types[x].WhichOneof("type") == "tensorType":
                self.readers.setdefault(x, []).append(softmax_axis(view, op))
        self.hidden = {}  # (softmax x, axis) -> [rows masked entirely, softmaxes still to read them]

    def see(self, env, names):
        """Note the rows of the softmax inputs among `names` (values of `env`, the float64 run)."""
        for name in names:
            value = env.get(name)
            if name not in self.readers or not isinstance(value, np.ndarray) or value.dtype.kind != "f" or not value.ndim:
                continue
            for axis in set(self.readers[name]):
                if -value.ndim <= axis < value.ndim:
                    with np.errstate(invalid="ignore"):
                        rows = np.all(np.asarray(value, np.float64) <= MASKED, axis=axis, keepdims=True)
                    self.hidden[(name, axis)] = [rows, self.readers[name].count(axis)]

    def hold(self, op, env):
        """At softmax `op`, once the run computed it: set its output's rows masked entirely to the uniform row in
        `env`. Returns those rows (a bool array, the softmax axis kept) if there are any, else None."""
        key = (self.view.arg(op, "x"), softmax_axis(self.view, op))
        if key not in self.hidden:
            return None
        rows, remaining = self.hidden[key]
        if remaining <= 1:
            del self.hidden[key]
        else:
            self.hidden[key][1] -= 1
        out = op.outputs[0].name
        exact = env.get(out)
        if not rows.any() or not isinstance(exact, np.ndarray) or exact.ndim != rows.ndim:
            return None
        env[out] = np.where(rows, 1.0 / exact.shape[key[1]], exact).astype(exact.dtype)
        return rows


def softmax_axis(view, op):
    axis = view.const(op, "axis")
    return int(axis.reshape(-1)[0]) if axis is not None and axis.size == 1 else -1
