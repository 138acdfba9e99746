"""MetaAlign on the built-in conditioned-style task: do generations follow the stated
preference, and do they flip when it is reversed?

Every held-out record (topics never trained on, `eval.jsonl`) is answered greedily
twice: under its stated condition and under the opposite one (short <-> long,
formal <-> casual). A rule measures the property the condition is about:
  length:   long when the answer has more than 14 words (the task's short answers have 8,
            its long ones 21)
  register: formal when it says "Certainly" and not "lol", casual when it says
            "Sure thing" or "lol" and not "Certainly"; anything else follows neither.
A generation follows its condition when the measured property equals it; a record flips
when both of its generations follow their (opposite) conditions. Reported per
condition for the trained policy and for a baseline checkpoint, by default the SFT
warm-up (the run's last checkpoint of its first stage).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

from alignjax.evaluation.fidelity import runs
from alignjax.evaluation.grid import GridPoint
from alignjax.tasks.conditioned_style import AXES, CONDITIONS, SYSTEM

NAME = "metaalign"
HELP = "MetaAlign: held-out generations follow the stated condition, and flip when it is reversed"
LONG_ABOVE_WORDS = 14


def measure_style(text: str) -> dict[str, str | None]:
    """The rule: {"length": short | long, "register": formal | casual | None}."""
    formal = "Certainly" in text and "lol" not in text
    casual = ("Sure thing" in text or "lol" in text) and "Certainly" not in text
    return {
        "length": "long" if len(text.split()) > LONG_ABOVE_WORDS else "short",
        "register": "formal" if formal else "casual" if casual else None,
    }


def _axis(condition: str) -> str:
    return next(a for a, values in AXES.items() if condition in values)


def _opposite(condition: str) -> str:
    values = AXES[_axis(condition)]
    return values[1 - values.index(condition)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run directory of configs/fidelity/metaalign.yaml (SFT, then DPO)")
    parser.add_argument(
        "--baseline",
        help="checkpoint step directory to compare with (default: the last checkpoint of the run's first stage)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=128)


def _sft_checkpoint(run_dir: str) -> str:
    from alignjax.train.config import load_config, stages

    first = stages(load_config(f"{run_dir}/config.yaml"))[0]
    return f"{run_dir}/checkpoints/{first.last_step}"


def _follow_rates(run: runs.Run, records: list[dict[str, Any]], max_new_tokens: int):
    """(per-condition table, samples): generations under each record's condition and its opposite."""
    prompts = [{"prompt": r["prompt"]} for r in records]
    points = [GridPoint(c, {"system": SYSTEM, "user_info": text}, {}) for c, text in CONDITIONS.items()]
    samples = runs.generate(run, prompts, points, max_new_tokens=max_new_tokens)
    response = {(x["point"], x["prompt_index"]): x["response"] for x in samples}
    table, kept = {}, []
    for condition in CONDITIONS:
        asked = [i for i, r in enumerate(records) if r["condition"] == condition]
        follows, flips = [], []
        for i in asked:
            stated, reversed_ = response[(condition, i)], response[(_opposite(condition), i)]
            ok = measure_style(stated)[_axis(condition)] == condition
            ok_reversed = measure_style(reversed_)[_axis(condition)] == _opposite(condition)
            follows.append(ok)
            flips.append(ok and ok_reversed)
            kept.append(
                {"prompt_index": i, "condition": condition, "response": stated, "reversed": reversed_}
            )
        table[condition] = {
            "follows": float(np.mean(follows)),
            "flips": float(np.mean(flips)),
            "n": len(asked),
        }
    for key in ("follows", "flips"):
        table.setdefault("all", {})[key] = float(
            np.average([table[c][key] for c in CONDITIONS], weights=[table[c]["n"] for c in CONDITIONS])
        )
    table["all"]["n"] = len(records)
    return table, kept


def measure(args: argparse.Namespace) -> dict[str, Any]:
    trained = runs.load_run(args.run)
    baseline_path = args.baseline or _sft_checkpoint(trained.run_dir)
    baseline = runs.load_run(baseline_path)
    with open(trained.data_file("eval"), encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    out: dict[str, Any] = {"run": trained.policy.source, "baseline": baseline.policy.source, "samples": []}
    for name, run in (("trained", trained), ("baseline", baseline)):
        table, kept = _follow_rates(run, records, args.max_new_tokens)
        out[name] = table
        out["samples"] += [dict(x, model=name) for x in kept]
    out["steps"] = {"trained": trained.policy.step, "baseline": baseline.policy.step}
    return out


def report(table: dict[str, Any]) -> list[str]:
    steps = table["steps"]
    lines = [
        (
            f"{'condition':<10}{'n':>5}{'follows (SFT+DPO)':>19}{'flips':>7}"
            f"{'follows (baseline)':>20}{'flips':>7}"
            f"   trained step {steps['trained']}, baseline step {steps['baseline']}"
        )
    ]
    for c in [*CONDITIONS, "all"]:
        t, b = table["trained"][c], table["baseline"][c]
        lines.append(
            f"{c:<10}{t['n']:>5}{t['follows']:>19.3f}{t['flips']:>7.3f}{b['follows']:>20.3f}{b['flips']:>7.3f}"
        )
    return lines


def plot(table: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [*CONDITIONS, "all"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained", sharey=True)
    x_C = np.arange(len(names))
    for ax, key, title in zip(
        axes, ("follows", "flips"), ("follows the stated condition", "flips when reversed")
    ):
        for offset, model, label in ((-0.2, "baseline", "SFT only"), (0.2, "trained", "SFT + DPO")):
            ax.bar(x_C + offset, [table[model][c][key] for c in names], 0.4, label=label)
        ax.axhline(0.9, color="0.5", lw=0.8, ls="--")
        ax.set_xticks(x_C, names)
        ax.set_title(title)
        ax.set_ylim(0, 1.05)
    axes[0].set_ylabel("fraction of held-out generations")
    axes[0].legend(fontsize=8)
    fig.suptitle("MetaAlign: held-out generations under stated and reversed conditions")
    fig.savefig(path, dpi=110)
    plt.close(fig)
