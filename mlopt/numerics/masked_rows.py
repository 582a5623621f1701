"""Softmax rows an attention mask hides entirely, in a float64 run: held to what the float32 source computes.

A softmax row whose every float64 input is at or below MASKED is a row a mask hides entirely (a padded query
position; a left-padded sequence under a causal mask). The model's meaning there is the fp32 source model's: its
sentinel, float32's minimum, swallows the score added to it (-3.4e38 + s rounds back to -3.4e38: float32's
spacing there is 2**104), so every entry that one sentinel masks is equal. float64 alone keeps the scores under
any sentinel (-49152 + s, -1e9 + s) and gives softmax(s), which neither computes. The float64 runs that judge fp16
runs - `audit`'s (analyses/audit_walk.py) and `verify`'s yardstick (exact.run_float64) - set such a row before
anything reads it:

- one sentinel per entry (a padded query row; BERT, T5, Llama): the uniform row, 1/n per entry;
- stacked sentinels (GPT-2's eager attention: `where(causal, w, min) + (1 - m) * min`): an entry that is both in
  the future and padded holds min + min, which is -inf in float32 itself, so its probability is 0, and the row is
  uniform over the entries with the fewest sentinels (TOP_TIER: within 2**13 of the row's maximum; the tiers of
  float32's minimum are 3.4e38 apart, those of finite_mask's stacked fill 24576);
- every entry stacked (no such row in a causal model, whose diagonal is never masked): float32 computes NaN there
  (-inf - -inf); the reference holds the row uniform instead, as the finite rewrite gives it: NaN is no meaning a
  device could be held to;
- every entry -inf in float64 (a stored -inf): uniform, as before.

Why MASKED = -2**14: from there on fp16's spacing is 16 (32 from -2**15), so an fp16 value there holds no score
of magnitude below 8; no score of a working model lies there (it would be two bits from overflowing fp16). Every
sentinel in use lies there: -inf, float32's minimum, -1e9, -65504, finite_mask's -49152 and its stacked -24576 per
sentinel. Apple's -1e4 (ml-ane-transformers) lies above: a row it masks entirely is softmax(s) in float32 as in
float64, and stays so.

Memory: one bool per element of a softmax input that has a row masked entirely (one per row otherwise), kept only
until the last softmax reading it has run.
"""

import numpy as np

MASKED = -(2.0**14)
TOP_TIER = 2.0**13


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
                    self.hidden[(name, axis)] = [least_masked(value, axis), self.readers[name].count(axis)]

    def hold(self, op, env):
        """At softmax `op`, once the run computed it: set its output's rows masked entirely to the float32 source's
        row in `env` (uniform over the entries with the fewest sentinels, 0 elsewhere). Returns those rows (a bool
        array, the softmax axis kept) if there are any, else None."""
        key = (self.view.arg(op, "x"), softmax_axis(self.view, op))
        if key not in self.hidden:
            return None
        (rows, top), remaining = self.hidden[key]
        if remaining <= 1:
            del self.hidden[key]
        else:
            self.hidden[key][1] -= 1
        out = op.outputs[0].name
        exact = env.get(out)
        if not rows.any() or not isinstance(exact, np.ndarray) or exact.ndim != rows.ndim:
            return None
        held = top / np.sum(top, axis=key[1], keepdims=True)
        env[out] = np.where(rows, held, exact).astype(exact.dtype)
        return rows


def least_masked(value, axis):
    """(rows of `value` along `axis` whose every entry is at or below MASKED, the entries of those rows with the
    fewest sentinels: within TOP_TIER of the row's maximum, every entry where that maximum is -inf)."""
    with np.errstate(invalid="ignore"):
        v = np.asarray(value, np.float64)
        rows = np.all(v <= MASKED, axis=axis, keepdims=True)
        if not rows.any():
            return rows, rows
        top = np.max(v, axis=axis, keepdims=True)
        return rows, (v >= top - TOP_TIER) | np.isneginf(top)


def softmax_axis(view, op):
    axis = view.const(op, "axis")
    return int(axis.reshape(-1)[0]) if axis is not None and axis.size == 1 else -1
