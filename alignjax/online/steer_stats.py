"""Statistics of a preference sweep: rank correlation (steerability) and the Pareto front."""

from __future__ import annotations

import numpy as np


def average_ranks(values_N) -> np.ndarray:
    """1-based ranks; tied values share the mean of the ranks they span (float64)."""
    values_N = np.asarray(values_N, np.float64)
    order_N = np.argsort(values_N, kind="stable")
    sorted_N = values_N[order_N]
    ranks_N = np.empty(len(values_N), np.float64)
    start = 0
    while start < len(sorted_N):
        end = start
        while end + 1 < len(sorted_N) and sorted_N[end + 1] == sorted_N[start]:
            end += 1
        ranks_N[order_N[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks_N


def spearman(x_N, y_N) -> float:
    """Spearman's rho: the Pearson correlation of average ranks. NaN when either side is
    constant (no order to follow) or there are fewer than two points."""
    x_N, y_N = np.asarray(x_N, np.float64), np.asarray(y_N, np.float64)
    if x_N.shape != y_N.shape or x_N.ndim != 1:
        raise ValueError(f"spearman needs two 1-D arrays of one length, got {x_N.shape} and {y_N.shape}")
    if len(x_N) < 2:
        return float("nan")
    rx_N = average_ranks(x_N) - (len(x_N) + 1) / 2
    ry_N = average_ranks(y_N) - (len(y_N) + 1) / 2
    denom = np.sqrt(np.sum(rx_N**2) * np.sum(ry_N**2))
    return float(np.sum(rx_N * ry_N) / denom) if denom > 0 else float("nan")


def pareto_mask(points_NxK) -> np.ndarray:
    """bool [N]: points no other point dominates (>= on every objective, > on one);
    every objective is maximised."""
    points_NxK = np.asarray(points_NxK, np.float64)
    n = len(points_NxK)
    keep_N = np.ones(n, bool)
    for i in range(n):
        ge_N = np.all(points_NxK >= points_NxK[i], axis=1)
        gt_N = np.any(points_NxK > points_NxK[i], axis=1)
        keep_N[i] = not np.any(ge_N & gt_N)
    return keep_N
