"""Confidence intervals for accuracies measured on a finite sample of images.

All intervals are two-sided at the normal quantile ``z`` (1.96 for 95 %).

* :func:`wilson_interval` for a binomial proportion ``k/n`` (one 0/1 outcome per image).
  Wilson rather than Wald because robust accuracies sit near 0 and 1, where Wald collapses
  to a zero-width interval.
* :func:`clustered_interval`, the report's interval for ``robust_mean``. The unit of
  independence is the *image* (evaluation protocol, "Intervals"): evaluation runs of one
  example share its adversarial input, and the cells pooled in one summary row (seeds, or the
  attacks of a worst-of row) re-use the same images, so all their rows are correlated.
  Treating (cell, example) values as independent shrinks the interval by about
  sqrt(1 + (k - 1) * icc) for k pooled cells; on a 3-seed grid it is ~1.3-1.6x too narrow
  and covers 74-79 % instead of 95 % (tests/test_coverage.py). So the values are summed per
  image (``T_i`` over its ``M_i`` (cell, example) values) and the point estimate is the
  ratio ``r = sum T / sum M`` (= the mean over (cell, example) values, the number the tables
  always showed), with the cluster-robust (linearised ratio-estimator) variance
  ``K / (K - 1) * sum (T_i - r M_i)^2 / (sum M)^2`` over the ``K`` images. With one value per
  image this is exactly ``s / sqrt(n)`` of the per-example means (the old interval for one
  cell), so single-cell numbers are unchanged. When every per-image mean is 0 or 1 (every
  cell and run of an image agree: one run, or a deterministic defence) the normal interval
  degenerates at 0 % and 100 %, and the Wilson interval on ``K`` images at ``r`` is used.
  Clustering more coarsely than needed (e.g. by example position when ``data_index`` is
  absent) only widens the interval, so it stays valid.
* :func:`mean_accuracy_interval`: the same with one cluster per value (kept for callers that
  already hold one value per image).
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np


def wilson_interval(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes out of ``n``; ``(nan, nan)`` when n == 0."""
    if n < 0 or k < 0 or k > n * (1 + 1e-12):
        raise ValueError(f"wilson_interval needs 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return (math.nan, math.nan)
    p = min(1.0, k / n)
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # Clip only floating-point noise: the Wilson interval lies within [0, 1] by construction.
    return (max(0.0, centre - half), min(1.0, centre + half))


def clustered_interval(values: Iterable[float], clusters: Iterable[object] | None = None,
                       z: float = 1.96) -> tuple[float, float]:
    """Interval for the mean of ``values`` (one per (cell, example), each in [0, 1]) when the
    values sharing a ``clusters`` id (the image) are correlated; see the module doc.

    ``clusters=None`` makes every value its own cluster. Returns ``(nan, nan)`` for no values
    and the uninformative ``(0, 1)`` for one image whose mean is not 0 or 1.
    """
    v = np.asarray(values if isinstance(values, np.ndarray) else list(values), dtype=float)
    if v.size == 0:
        return (math.nan, math.nan)
    if clusters is None:
        ids = np.arange(v.size)
    else:
        c = np.asarray(clusters if isinstance(clusters, np.ndarray) else list(clusters))
        if c.shape != v.shape:
            raise ValueError(f"clustered_interval: {c.size} cluster ids for {v.size} values")
        ids = np.unique(c, return_inverse=True)[1].reshape(-1)
    t = np.bincount(ids, weights=v)
    m = np.bincount(ids).astype(float)
    r = float(t.sum() / m.sum())
    means = t / m
    return interval_from_clusters(r, t.size, float(np.sum((t - r * m) ** 2)), float(m.sum()),
                                  bool(np.all((means == 0.0) | (means == 1.0))), z)


def interval_from_clusters(r: float, k: int, squares: float, m_sum: float, all_01: bool,
                           z: float = 1.96) -> tuple[float, float]:
    """:func:`clustered_interval` from its per-image sums, as an out-of-core aggregation gives
    them: the ratio ``r = sum T / sum M``, ``k`` images, ``squares = sum (T_i - r M_i)^2``,
    ``m_sum = sum M`` and whether every per-image mean ``T_i / M_i`` is 0 or 1."""
    if k == 0:
        return (math.nan, math.nan)
    if all_01:
        return wilson_interval(r * k, k, z)
    if k < 2:
        return (0.0, 1.0)
    var = k / (k - 1) * squares / m_sum ** 2
    half = z * math.sqrt(var)
    return (max(0.0, r - half), min(1.0, r + half))


def mean_accuracy_interval(per_example: Iterable[float], z: float = 1.96) -> tuple[float, float]:
    """Interval for the mean of values that are independent (one per image): the normal
    ``mean ± z s / sqrt(n)``, or Wilson when every value is 0 or 1 (see the module doc)."""
    return clustered_interval(per_example, None, z)
