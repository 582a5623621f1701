"""The pieces every normalisation chain is made of, shared by the norm rules (RMSNorm, LayerNorm):

    reduction (reduce_mean | reduce_sum | reduce_sum_square) of a square        statistic.py
      -> the walk to the root: eps, 1/N, shapes put back, tile                  statistic.py
      -> root: rsqrt(epsilon) | pow(-0.5) | sqrt | pow(0.5)                     statistic.py
      -> normaliser: mul(t, inverse root) | real_div(t, sqrt), through tile     scaling.py
      -> affine: [mul(gamma)] [add(beta)], constant per call, [cast back]       scaling.py
    and for LayerNorm, t = x - mean(x) in the spellings converters broadcast    centring.py

Each piece records the ops it accepts on the Trace and fails with a reason a user can act on.
"""

from .centring import Centred, Mean, broadcasts_as_kept, centred, mean_of
from .scaling import Normalised, affine, check_output, normaliser
from .statistic import REDUCTIONS, Statistic, is_square_root, reduction_axes, square_of, statistic_to_root, uniform_const

__all__ = [
    "REDUCTIONS", "Centred", "Mean", "Normalised", "Statistic", "affine", "broadcasts_as_kept", "centred",
    "check_output", "is_square_root", "mean_of", "normaliser", "reduction_axes", "square_of", "statistic_to_root",
    "uniform_const",
]
