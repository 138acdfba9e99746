"""The Pareto-front picture of an `alignjax eval` table: mean scores per grid point.

Two objectives: one scatter, x = objective 1, y = objective 2. K > 2: one panel per
pair. Colour is the weight the point asks of the first objective that has targets
(grey where a point asks nothing of it); a weight sweep is joined by a line in grid
order; points no other point dominates in that panel are ringed in red.
"""

from __future__ import annotations

import itertools
import math
import os
from typing import Any

import numpy as np

from alignjax.evaluation.steerability import pareto_mask


def plot_pareto(table: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = table["objectives"]
    points = table["points"]
    pairs = list(itertools.combinations(range(len(labels)), 2))
    if not pairs:  # one objective: its mean per point, along the x axis only
        pairs = [(0, None)]
    cols = min(3, len(pairs))
    rows = math.ceil(len(pairs) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(5.2 * cols, 4.4 * rows), squeeze=False, layout="constrained"
    )
    colour_by = next((lab for lab in labels if any(lab in p["targets"] for p in points)), None)
    colour_N = np.asarray([p["targets"].get(colour_by, np.nan) if colour_by else np.nan for p in points])
    means_NxK = np.asarray([[p["scores"][lab]["mean"] for lab in labels] for p in points])
    scatter = None
    for ax, (i, j) in zip(axes.flat, pairs):
        x_N = means_NxK[:, i]
        y_N = means_NxK[:, j] if j is not None else np.zeros(len(points))
        if table["mode"] == "weights":
            ax.plot(x_N, y_N, "-", color="0.6", lw=1, zorder=1)
        known_N = ~np.isnan(colour_N)
        ax.scatter(x_N[~known_N], y_N[~known_N], c="0.55", s=45, zorder=2)
        if known_N.any():
            scatter = ax.scatter(
                x_N[known_N],
                y_N[known_N],
                c=colour_N[known_N],
                cmap="viridis",
                vmin=0.0,
                vmax=1.0,
                s=45,
                zorder=2,
            )
        front_N = pareto_mask(np.stack([x_N, y_N], 1))
        ax.scatter(
            x_N[front_N],
            y_N[front_N],
            s=150,
            facecolors="none",
            edgecolors="red",
            lw=1.5,
            zorder=3,
            label="non-dominated",
        )
        for p, x, y in zip(points, x_N, y_N):
            ax.annotate(p["name"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xlabel(f"{labels[i]} (mean score)")
        ax.set_ylabel(f"{labels[j]} (mean score)" if j is not None else "")
        ax.margins(0.15)  # room for the point names
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=7)
    for ax in list(axes.flat)[len(pairs) :]:
        ax.axis("off")
    if scatter is not None:
        fig.colorbar(scatter, ax=axes.ravel().tolist(), label=f"weight of {colour_by}")
    model = os.path.join(*os.path.normpath(table["model"]).split(os.sep)[-2:])
    fig.suptitle(
        f"{model} step {table['step']}: mean score per grid point (n={points[0]['n']} each)", fontsize=10
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)
