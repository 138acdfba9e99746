"""Statistics of a preference sweep: rank correlation (steerability), the Pareto front,
dominance between points and the 2-D hypervolume of a front."""

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


def dominates(a_K, b_K) -> bool:
    """a dominates b: at least as good on every objective and better on one (maximised)."""
    a_K, b_K = np.asarray(a_K, np.float64), np.asarray(b_K, np.float64)
    return bool(np.all(a_K >= b_K) and np.any(a_K > b_K))


def dominators(points_NxK, others_MxK) -> list[list[int]]:
    """For each of `points`, the indices of the `others` that dominate it."""
    others_MxK = np.asarray(others_MxK, np.float64)
    return [[j for j, o_K in enumerate(others_MxK) if dominates(o_K, p_K)] for p_K in points_NxK]


def hypervolume_2d(points_Nx2, reference_2) -> float:
    """The area dominated by the points and bounded below by `reference` (both objectives
    maximised), exactly: the union of the rectangles [ref, p]. Points not above the
    reference on both objectives add nothing."""
    points_Nx2 = np.asarray(points_Nx2, np.float64).reshape(-1, 2)
    ref_x, ref_y = map(float, reference_2)
    inside_N = (points_Nx2[:, 0] > ref_x) & (points_Nx2[:, 1] > ref_y)
    # Sweep from the largest x down: each point that reaches higher than every point to its
    # right adds the strip between that height and its own, from the reference to its x.
    area, height = 0.0, ref_y
    for x, y in sorted(points_Nx2[inside_N].tolist(), key=lambda p: (-p[0], -p[1])):
        if y > height:
            area += (x - ref_x) * (y - height)
            height = y
    return area
