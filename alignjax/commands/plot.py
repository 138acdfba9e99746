"""`alignjax plot RUN_DIR`: training curves of a run, from its metrics.jsonl, as one PNG.

One panel per metric family, train and eval (`eval/...`) on the same axes in the same
colour, eval as dashed lines with markers since it is logged only every few steps:

  loss (and loss/<part>)  rewards/accuracies  rewards/margins
  rewards/chosen vs rejected  grad_norm  learning rate  tokens/s
  rewards/accuracies per condition (every rewards/accuracies/<name>)
  then one panel per remaining family, by first path segment (logps, kl, ...)

Null values (how metrics.jsonl stores NaN and inf) are drawn as gaps. When a restarted
run left the same step twice in the file, the later record wins.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from collections.abc import Iterable, Sequence

import numpy as np

from alignjax.core import paths
from alignjax.core.errors import MissingDependencyError, run_command
from alignjax.core.fileio import atomic_open

EVAL_PREFIX = "eval/"
PER_CONDITION_PREFIX = "rewards/accuracies/"

# (title, base metric names) for the families with a fixed place, in drawing order.
_FIXED_PANELS = (
    ("loss", None),  # "loss" and "loss/<part>", matched in _panel_title
    ("rewards/accuracies", ("rewards/accuracies",)),
    ("rewards/margins", ("rewards/margins",)),
    ("rewards/chosen vs rejected", ("rewards/chosen", "rewards/rejected")),
    ("grad_norm", ("grad_norm",)),
    ("learning rate", ("lr", "learning_rate")),
    ("tokens/s", ("tokens_per_sec", "tokens_per_s")),
    ("rewards/accuracies per condition", None),  # every rewards/accuracies/<name>
)


@dataclasses.dataclass(frozen=True)
class Panel:
    title: str
    keys: tuple[str, ...]  # metric keys as in metrics.jsonl, train and eval/ together


def load_metrics(path: str | os.PathLike) -> list[dict[str, float]]:
    """Records of a metrics.jsonl, one per step in step order, nulls as NaN."""
    path = os.fspath(path)
    if not paths.exists(path):
        raise FileNotFoundError(
            f"{path} does not exist; pass the run directory of `alignjax train` (the one holding metrics.jsonl)"
        )
    with paths.open(path, encoding="utf-8") as f:
        lines = f.readlines()
    by_step: dict[int, dict[str, float]] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step = int(record.pop("step"))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            if number == len(lines):  # a run still writing, or killed mid-line
                continue
            raise ValueError(f"{path}:{number}: not a metrics record ({e})") from e
        values = by_step.setdefault(step, {"step": step})
        for key, value in record.items():
            if value is None or isinstance(value, (int, float)):
                values[key] = math.nan if value is None else float(value)
    if not by_step:
        raise ValueError(f"{path} has no metrics records yet; plot again once training has logged a step")
    return [by_step[step] for step in sorted(by_step)]


# Cumulative counters and bookkeeping: not curves anyone reads for learning.
_COUNTERS = {"data/examples", "data/tokens", "data/batches", "data/epoch", "stage"}


def _metric_name(key: str) -> str:
    """The metric a key plots: `eval/<set>/rewards/accuracies` (a named eval set) overlays
    `rewards/accuracies`, like the unnamed `eval/rewards/accuracies`."""
    base = key.removeprefix(EVAL_PREFIX)
    if key.startswith(EVAL_PREFIX) and "/" in base:
        rest = base.split("/", 1)[1]
        fixed = {title for title, _ in _FIXED_PANELS}
        if _panel_title(base) not in fixed and _panel_title(rest) in fixed:
            return rest
    return base


def _panel_title(base: str) -> str:
    if base == "loss" or base.startswith("loss/"):
        return "loss"
    if base.startswith(PER_CONDITION_PREFIX):
        return "rewards/accuracies per condition"
    for title, names in _FIXED_PANELS:
        if names is not None and base in names:
            return title
    return base.split("/", 1)[0]


def panels_for(keys: Iterable[str]) -> list[Panel]:
    """Which metric keys share a panel, in drawing order (fixed families first)."""
    keys = sorted(set(keys) - {"step"} - _COUNTERS, key=lambda k: (k.startswith(EVAL_PREFIX), k))
    grouped: dict[str, list[str]] = {}
    for key in keys:
        grouped.setdefault(_panel_title(_metric_name(key)), []).append(key)
    fixed = [title for title, _ in _FIXED_PANELS]
    order = [t for t in fixed if t in grouped] + sorted(t for t in grouped if t not in fixed)
    return [Panel(title, tuple(grouped[title])) for title in order]


def smooth(values_N: np.ndarray, weight: float) -> np.ndarray:
    """Exponential moving average, debiased so the first points are not pulled to 0.

    NaNs are skipped (left as NaN, not folded into the average) so a gap stays a gap.
    """
    if weight == 0.0:
        return values_N
    out_N = np.full_like(values_N, np.nan)
    average, total_weight = 0.0, 0.0
    for i, value in enumerate(values_N):
        if math.isnan(value):
            continue
        average = weight * average + (1 - weight) * value
        total_weight = weight * total_weight + (1 - weight)
        out_N[i] = average / total_weight
    return out_N


def series(records: Sequence[dict[str, float]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the records that have `key`."""
    present = [r for r in records if key in r]
    return (
        np.array([r["step"] for r in present], dtype=np.float64),
        np.array([r[key] for r in present], dtype=np.float64),
    )


def draw(records: Sequence[dict[str, float]], *, smoothing: float = 0.0, title: str = ""):
    """A matplotlib Figure of `records`: one Axes per `panels_for` panel, in that order."""
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    figure_cls = _import_matplotlib_figure()
    panels = panels_for(key for record in records for key in record)
    if not panels:
        raise ValueError("the metrics records hold no metric besides 'step'")
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = figure_cls(figsize=(5.2 * ncols, 3.4 * nrows), layout="constrained")
    if title:
        fig.suptitle(title)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, panel in zip(axes, panels):
        _draw_panel(ax, panel, records, smoothing)
    for ax in axes[len(panels) :]:
        fig.delaxes(ax)
    return fig


def _draw_panel(ax, panel: Panel, records, smoothing: float) -> None:
    if panel.title == "learning rate":
        smoothing = 0.0  # a schedule has no noise; averaging would only delay it
    colors = {}
    for key in panel.keys:
        base = key.removeprefix(EVAL_PREFIX)
        is_eval = key != base
        color = colors.setdefault(base, f"C{len(colors) % 10}")
        label = key.replace(PER_CONDITION_PREFIX, "") if panel.title.endswith("per condition") else key
        steps_N, values_N = series(records, key)
        if is_eval:
            ax.plot(steps_N, values_N, "o--", color=color, markersize=3, linewidth=1, label=label)
        elif smoothing > 0:
            ax.plot(steps_N, values_N, color=color, alpha=0.25, linewidth=0.8)
            ax.plot(steps_N, smooth(values_N, smoothing), color=color, linewidth=1.4, label=label)
        else:
            ax.plot(steps_N, values_N, color=color, linewidth=1.2, label=label)
    ax.set_title(panel.title)
    ax.set_xlabel("step")
    ax.grid(True, alpha=0.3)
    if panel.title == "learning rate":
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    if len(panel.keys) > 1:
        ax.legend(fontsize="small", ncol=2 if len(panel.keys) > 6 else 1)


def plot_run(
    run_dir: str | os.PathLike, out_png: str | os.PathLike | None = None, *, smoothing: float = 0.0
) -> list[str]:
    """Draws `<run_dir>/metrics.jsonl` to `out_png` (default `<run_dir>/plots/curves.png`).

    Returns the paths written. `smoothing` in [0, 1) is the weight of an exponential
    moving average over the train curves (0: raw; TensorBoard's default look is 0.6);
    the raw curve stays visible behind the smoothed one.
    """
    run_dir = os.fspath(run_dir)
    records = load_metrics(paths.join(run_dir, "metrics.jsonl"))
    out_png = os.fspath(out_png) if out_png is not None else paths.join(run_dir, "plots", "curves.png")
    fig = draw(
        records,
        smoothing=smoothing,
        title=paths.basename(run_dir if paths.is_remote(run_dir) else os.path.normpath(run_dir)),
    )
    with atomic_open(out_png, "wb") as f:  # a run in a bucket gets its plot there too
        fig.savefig(f, dpi=110, format="png")
    return [out_png]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="alignjax plot", description="Draw the training curves of a run.")
    parser.add_argument("run_dir", help="run directory of `alignjax train` (holds metrics.jsonl)")
    parser.add_argument("--out", help="PNG to write (default: RUN_DIR/plots/curves.png)")
    parser.add_argument("--smoothing", type=float, default=0.0, help="EMA weight in [0, 1) for train curves")
    args = parser.parse_args(argv)
    return run_command("plot", _plot, args)


def _plot(args: argparse.Namespace) -> int:
    for path in plot_run(args.run_dir, args.out, smoothing=args.smoothing):
        print(f"wrote {path}")
    return 0


def _import_matplotlib_figure():
    # Figure without pyplot: no global figure registry and no GUI backend, so plotting
    # works headless and leaves the caller's matplotlib state alone (savefig uses Agg).
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise MissingDependencyError("`alignjax plot` needs matplotlib: pip install matplotlib") from e
    return Figure


if __name__ == "__main__":
    sys.exit(main())
