"""Confidence intervals for accuracies measured on a finite sample of examples.

Two intervals, both at a two-sided normal quantile ``z`` (1.96 for 95 %):

* :func:`wilson_interval` for a binomial proportion ``k/n`` (one 0/1 outcome per
  example: clean accuracy with one run, majority vote, worst case). Wilson rather
  than Wald because robust accuracies sit near 0 and 1, where Wald collapses to a
  zero-width interval.
* :func:`mean_accuracy_interval` for the mean-over-runs accuracy of a stochastic
  defence. The unit of sampling is the *example*, not the (example, run) row:
  runs of one example share its image and are correlated, so treating rows as
  independent would shrink the interval by up to sqrt(runs). Each example is
  reduced to its mean correctness over runs, and the interval is the normal
  approximation ``mean ± z * s / sqrt(n)`` with the sample standard deviation
  ``s`` (ddof=1), clipped to [0, 1]. When every per-example value is 0 or 1
  (one run, or runs that always agree) the data are binomial and the Wilson
  interval is used instead, which stays sensible at 0 % and 100 %.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

def wilson_interval(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes out of ``n``; ``(nan, nan)`` when n == 0."""
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"wilson_interval needs 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # Clip only floating-point noise: the Wilson interval lies within [0, 1] by construction.
    return (max(0.0, centre - half), min(1.0, centre + half))


def mean_accuracy_interval(per_example: Iterable[float], z: float = 1.96) -> tuple[float, float]:
    """Interval for the mean over examples of per-example mean correctness (see module doc).

    ``per_example`` holds one value in [0, 1] per example. Returns ``(nan, nan)`` for no
    examples and the uninformative ``(0, 1)`` for a single non-binary value, whose spread
    cannot be estimated.
    """
    v = np.asarray(per_example if isinstance(per_example, np.ndarray) else list(per_example),
                   dtype=float)
    n = v.size
    if n == 0:
        return (math.nan, math.nan)
    if np.all((v == 0.0) | (v == 1.0)):
        return wilson_interval(float(v.sum()), n, z)
    if n < 2:
        return (0.0, 1.0)
    mean = float(v.mean())
    half = z * float(v.std(ddof=1)) / math.sqrt(n)
    return (max(0.0, mean - half), min(1.0, mean + half))
