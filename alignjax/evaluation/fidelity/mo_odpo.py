"""MO-ODPO against its baselines at an equal number of sampled responses: one policy
conditioned on objective weights, one static-weight online DPO policy per weight vector
(`loss.mo_odpo.fixed_weights`), and one unconditioned online DPO policy
(`loss.mo_odpo.weights_in_prompt: false`), all trained on `data.builtin: weighted_style`.

Every policy answers the held-out prompts (topics never trained on) with --num-samples
samples at --temperature, as `alignjax eval --weights-grid` samples, and every answer is
scored by the MO-ODPO run's rewards on the unconditioned prompt. A policy's points: for
MO-ODPO one per weight vector of the grid (the weights in its prompt), for a static
policy one, under the weights it was trained with, for the unconditioned policy one. A
point's coordinates are its mean scores. Reported: each point and the points of the
other policies that dominate it; each policy's hypervolume (the area its points dominate
above --reference, both objectives maximised); MO-ODPO's steerability (Spearman's rho
between an objective's weight and its score); and each policy's training budget in
sampled responses (steps x prompts per step x samples per prompt, as configured).
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from alignjax.evaluation import grid as eval_grid
from alignjax.evaluation import sweep as grid_sweep
from alignjax.evaluation.fidelity import runs
from alignjax.evaluation.grid import GridPoint, LabelledReward
from alignjax.evaluation.steerability import dominators, hypervolume_2d
from alignjax.generation.responses import sampling_config
from alignjax.rewards.functions import build_reward

NAME = "mo_odpo"
HELP = "MO-ODPO's front vs static-weight and unconditioned online DPO (data.builtin: weighted_style)"
POLICIES = ("MO-ODPO", "static", "unconditioned")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("mo_odpo_run", help="run directory of configs/fidelity/mo_odpo.yaml")
    parser.add_argument(
        "--static",
        nargs="+",
        required=True,
        metavar="RUN",
        help="static-weight runs (loss.mo_odpo.fixed_weights), each measured under its own weights",
    )
    parser.add_argument(
        "--unconditioned",
        required=True,
        metavar="RUN",
        help="a run with loss.mo_odpo.weights_in_prompt=false",
    )
    parser.add_argument(
        "--grid-steps", type=int, default=5, help="MO-ODPO's weight grid: 5 -> 0, .25, ..., 1"
    )
    parser.add_argument("--num-samples", type=int, default=4, help="answers per prompt and point")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument(
        "--reference",
        help="the hypervolume's reference point, one number per objective (comma-separated); default: "
        "the scores of a --max-new-tokens-character answer without the keyword (x repeated)",
    )


def _objectives(run: runs.Run) -> list[LabelledReward]:
    """The run's training rewards, labelled by the objective names of its weights template."""
    labels = run.renderer.data_cfg.templates.objectives
    specs = run.stage.config.loss.section("mo_odpo").rewards
    return [
        LabelledReward(label, spec, build_reward(spec, where=f"loss.mo_odpo.rewards[{i}]"))
        for i, (label, spec) in enumerate(zip(labels, specs))
    ]


def _budget(run: runs.Run) -> dict[str, int]:
    section, cfg = run.stage.config.loss.section("mo_odpo"), run.stage.config
    steps = run.stage.last_step - run.stage.first_step
    return {
        "steps": steps,
        "responses": steps * cfg.train.batch_size * section.num_samples,
    }


def _weights_name(weights: dict[str, float]) -> str:
    return ",".join(f"{k}={w:g}" for k, w in weights.items())


def _check(run: runs.Run, role: str) -> None:
    section = run.stage.config.loss.section("mo_odpo")
    if run.stage.config.loss.names != ("mo_odpo",):
        raise ValueError(f"{run.run_dir}: its last stage is not an MO-ODPO stage (loss.type: mo_odpo)")
    wanted = {
        "MO-ODPO": (
            section.fixed_weights is None and section.weights_in_prompt,
            "Dirichlet weights in the prompt",
        ),
        "static": (section.fixed_weights is not None, "loss.mo_odpo.fixed_weights set"),
        "unconditioned": (
            section.fixed_weights is None and not section.weights_in_prompt,
            "loss.mo_odpo.weights_in_prompt=false",
        ),
    }
    ok, what = wanted[role]
    if not ok:
        raise ValueError(f"{run.run_dir}: passed as the {role} run, which needs {what}")


def _reference(arg: str | None, objectives: list[LabelledReward], max_new_tokens: int) -> list[float]:
    if arg is None:
        worst = ["x" * max_new_tokens]
        return [float(np.asarray(o.reward([""], worst))[0]) for o in objectives]
    values = [float(v) for v in arg.split(",")]
    if len(values) != len(objectives):
        raise ValueError(f"--reference {arg}: give one number per objective {[o.label for o in objectives]}")
    return values


def measure(args: argparse.Namespace) -> dict[str, Any]:
    main = runs.load_run(args.mo_odpo_run)
    _check(main, "MO-ODPO")
    objectives = _objectives(main)
    labels = [o.label for o in objectives]
    if len(labels) != 2:
        raise ValueError(f"{args.mo_odpo_run}: the hypervolume here is 2-D; the run has objectives {labels}")
    prompts = grid_sweep.read_prompts(main.data_file("eval_prompts"))
    grid = eval_grid.weight_grid(labels, args.grid_steps)
    jobs = [("MO-ODPO", main, grid)]
    for run_dir in args.static:
        run = runs.load_run(run_dir)
        _check(run, "static")
        section = run.stage.config.loss.section("mo_odpo")
        weights = dict(zip(labels, map(float, section.fixed_weights)))
        fields = {"weights": weights} if section.weights_in_prompt else {}
        jobs.append(("static", run, [GridPoint(_weights_name(weights), fields, dict(weights))]))
    uncond = runs.load_run(args.unconditioned)
    _check(uncond, "unconditioned")
    jobs.append(("unconditioned", uncond, [GridPoint("no weights", {}, {})]))

    points, samples, budget, steer = [], [], {p: [] for p in POLICIES}, {}
    for policy_name, run, run_points in jobs:
        sampling = sampling_config(run.policy, args.max_new_tokens, args.temperature)
        run_samples, scores = grid_sweep.sweep(
            run.policy,
            run.renderer,
            prompts,
            run_points,
            objectives,
            sampling,
            seed=0,
            num_samples=args.num_samples,
        )
        summary = grid_sweep.summarise(run_points, objectives, run_samples, scores)
        if policy_name == "MO-ODPO":
            steer = summary["steerability"]
        for point, row in zip(run_points, summary["points"]):
            points.append(
                {
                    "policy": policy_name,
                    "name": point.name,
                    "weights": point.targets,
                    "run": run.run_dir,
                    "means": {k: row["scores"][k]["mean"] for k in labels},
                    "stds": {k: row["scores"][k]["std"] for k in labels},
                    "response_chars": row["response_chars"],
                    "n": row["n"],
                }
            )
        samples += [dict(x, policy=policy_name) for x in run_samples]
        budget[policy_name].append(_budget(run) | {"run": run.run_dir})

    means_NxK = np.asarray([[p["means"][k] for k in labels] for p in points])
    for p, dominating in zip(points, dominators(means_NxK, means_NxK)):
        p["dominated_by"] = [f"{points[j]['policy']} {points[j]['name']}" for j in dominating]
    reference = _reference(args.reference, objectives, args.max_new_tokens)
    policy_N = np.asarray([p["policy"] for p in points])
    hypervolume = {name: hypervolume_2d(means_NxK[policy_N == name], reference) for name in POLICIES}
    return {
        "objectives": labels,
        "rewards": {o.label: o.spec for o in objectives},
        "reference": reference,
        "points": points,
        "hypervolume": hypervolume,
        "steerability": steer,
        "budget": budget,
        "num_prompts": len(prompts),
        "num_samples": args.num_samples,
        "temperature": args.temperature,
        "samples": samples,
    }


def report(table: dict[str, Any]) -> list[str]:
    labels = table["objectives"]
    lines = [
        f"{'policy':<15}{'weights':<28}" + "".join(f"{k:>10}" for k in labels) + f"{'chars':>8}  dominated by"
    ]
    for p in table["points"]:
        dominated = "; ".join(d for d in p["dominated_by"] if not d.startswith(p["policy"] + " ")) or "-"
        lines.append(
            f"{p['policy']:<15}{p['name']:<28}"
            + "".join(f"{p['means'][k]:>10.3f}" for k in labels)
            + f"{p['response_chars']:>8.1f}  {dominated}"
        )
    ref = ", ".join(f"{k}={v:.3f}" for k, v in zip(labels, table["reference"]))
    hv = ", ".join(f"{name} {v:.3f}" for name, v in table["hypervolume"].items())
    lines.append(f"hypervolume (reference {ref}): {hv}")
    spent = []
    for name, entries in table["budget"].items():
        total = sum(e["responses"] for e in entries)
        each = f" ({len(entries)} runs x {entries[0]['responses']})" if len(entries) > 1 else ""
        spent.append(f"{name} {total}{each}")
    lines.append("responses sampled in training: " + ", ".join(spent))
    for k, s in table["steerability"].items():
        lines.append(
            f"MO-ODPO steerability {k}: {s['samples']:.3f} over samples (n={s['n_samples']}), "
            f"{s['grid_means']:.3f} over grid means (points={s['n_points']})"
        )
    return lines


def _staircase(points_Nx2: np.ndarray, reference: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """The outline of the region the points dominate above the reference."""
    inside = points_Nx2[(points_Nx2[:, 0] > reference[0]) & (points_Nx2[:, 1] > reference[1])]
    xs, ys, height = [], [], reference[1]
    for x, y in sorted(inside.tolist(), key=lambda p: (-p[0], -p[1])):
        if y > height:
            xs += [x, x]
            ys += [height, y]
            height = y
    xs.append(reference[0])
    ys.append(height)
    return np.asarray(xs), np.asarray(ys)


def plot(table: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, reference = table["objectives"], table["reference"]
    fig, ax = plt.subplots(figsize=(7.5, 5.2), layout="constrained")
    styles = {"MO-ODPO": ("o", "C0"), "static": ("s", "C1"), "unconditioned": ("*", "C3")}
    scatter = None
    for name in POLICIES:
        mine = [p for p in table["points"] if p["policy"] == name]
        if not mine:
            continue
        xy_Nx2 = np.asarray([[p["means"][k] for k in labels] for p in mine])
        marker, colour = styles[name]
        xs, ys = _staircase(xy_Nx2, reference)
        hv = table["hypervolume"][name]
        ax.plot(xs, ys, "--", color=colour, lw=1, label=f"{name} front (hypervolume {hv:.2f})")
        weight_N = np.asarray([p["weights"].get(labels[0], np.nan) for p in mine])
        if np.isnan(weight_N).all():
            ax.scatter(xy_Nx2[:, 0], xy_Nx2[:, 1], marker=marker, s=220, c=colour, zorder=3)
        else:
            scatter = ax.scatter(
                xy_Nx2[:, 0],
                xy_Nx2[:, 1],
                marker=marker,
                s=70,
                c=weight_N,
                cmap="viridis",
                vmin=0,
                vmax=1,
                edgecolors=colour,
                linewidths=1.5,
                zorder=3,
            )
        for p, (x, y) in zip(mine, xy_Nx2):
            w = p["weights"].get(labels[0])
            ax.annotate(
                f"{name[0]} {w:g}" if w is not None else name,
                (x, y),
                textcoords="offset points",
                xytext=(5, -10 if name == "static" else 5),
                fontsize=7,
                color=colour,
            )
    if scatter is not None:
        fig.colorbar(scatter, ax=ax, label=f"weight of {labels[0]}")
    ax.set_xlabel(f"{labels[0]} (mean score)")
    ax.set_ylabel(f"{labels[1]} (mean score)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    steer = ", ".join(f"{k} {s['samples']:.2f}" for k, s in table["steerability"].items())
    fig.suptitle(
        "MO-ODPO (M) vs static-weight (s) and unconditioned online DPO, labelled by the weight of "
        f"{labels[0]}\n{table['num_prompts']} held-out prompts x {table['num_samples']} samples per point; "
        f"MO-ODPO's steerability {steer}",
        fontsize=9,
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)
