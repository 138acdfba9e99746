"""P-DPO on its paper's synthetic task (`data.builtin: user_length`): per-user reward
accuracy against vanilla DPO trained on the same records, and the mean generated length
per user, for an unseen user too.

Accuracy is over the held-out pairs (`pdpo_eval`), a pair counting as correct when its
implicit-reward margin for its user is positive: with the user's soft tokens for P-DPO,
without any user for DPO (which has none). Lengths are of greedy responses to the
held-out prompts, in characters; the unseen user is P-DPO's generic user (index 0).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import numpy as np

from alignjax.evaluation.fidelity import runs
from alignjax.evaluation.grid import GridPoint
from alignjax.evaluation.personalized import accuracy_table
from alignjax.evaluation.sweep import read_prompts
from alignjax.tasks.user_length import USERS

NAME = "pdpo"
HELP = "P-DPO vs vanilla DPO on users who prefer long vs short answers (data.builtin: user_length)"
UNSEEN = "unseen_user"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pdpo_run", help="run directory of configs/fidelity/pdpo.yaml")
    parser.add_argument("dpo_run", help="run directory of the same config with loss.type=[sigmoid,sft]")
    parser.add_argument("--max-new-tokens", type=int, default=160)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from alignjax.evaluation.personalized import user_accuracies

    pdpo, dpo = runs.load_run(args.pdpo_run), runs.load_run(args.dpo_run)
    eval_path = pdpo.data_file("pdpo_eval")
    pdpo_acc = user_accuracies(
        pdpo.policy,
        pdpo.renderer.data_cfg,
        pdpo.renderer.user_vocab,
        runs.reference_params(pdpo),
        eval_path,
        pdpo.stage.config.loss.beta,
        os.path.join(args.out, "user_vocab.json"),
    )
    dpo_acc = accuracy_table(*runs.margins_by_group(dpo, eval_path, "user_id"))
    prompts = read_prompts(pdpo.data_file("eval_prompts"))
    points = [GridPoint(u, {"user_id": u}, {}) for u in USERS] + [GridPoint(UNSEEN, {"user_id": UNSEEN}, {})]
    samples = runs.generate(pdpo, prompts, points, max_new_tokens=args.max_new_tokens)
    samples += [
        dict(x, point="dpo")
        for x in runs.generate(dpo, prompts, [GridPoint("dpo", {}, {})], max_new_tokens=args.max_new_tokens)
    ]
    chars = {}
    for x in samples:
        chars.setdefault(x["point"], []).append(len(x["response"]))
    length = {point: float(np.mean(v)) for point, v in chars.items()}
    group_length = {
        g: float(np.mean([c for u, pref in USERS.items() if pref == g for c in chars[u]]))
        for g in ("long", "short")
    }
    return {
        "users": USERS,
        "accuracy": {"pdpo": pdpo_acc, "dpo": dpo_acc},
        "mean_chars": length,
        "mean_chars_by_preference": group_length,
        "long_over_short": group_length["long"] / group_length["short"],
        "num_prompts": len(prompts),
        "samples": samples,
    }


def report(table: dict[str, Any]) -> list[str]:
    acc, chars = table["accuracy"], table["mean_chars"]
    lines = [f"{'user':<14}{'prefers':>8}{'P-DPO acc':>11}{'DPO acc':>9}{'P-DPO chars':>13}"]
    for user, pref in table["users"].items():
        lines.append(
            f"{user:<14}{pref:>8}{acc['pdpo'][user]['accuracy']:>11.3f}{acc['dpo'][user]['accuracy']:>9.3f}"
            f"{chars[user]:>13.1f}"
        )
    lines.append(
        f"{'all':<14}{'':>8}{acc['pdpo']['all']['accuracy']:>11.3f}{acc['dpo']['all']['accuracy']:>9.3f}"
    )
    lines.append(f"{UNSEEN:<14}{'?':>8}{'':>11}{'':>9}{chars[UNSEEN]:>13.1f}")
    by = table["mean_chars_by_preference"]
    lines.append(
        f"mean chars: long-preferring {by['long']:.1f}, short-preferring {by['short']:.1f}, "
        f"ratio {table['long_over_short']:.2f}; vanilla DPO (no user) {chars['dpo']:.1f}"
    )
    return lines


def plot(table: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    users = list(table["users"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    x_U = np.arange(len(users))
    for offset, method, label in ((-0.2, "pdpo", "P-DPO"), (0.2, "dpo", "vanilla DPO")):
        left.bar(x_U + offset, [table["accuracy"][method][u]["accuracy"] for u in users], 0.4, label=label)
    left.axhline(0.5, color="0.5", lw=0.8, ls="--")
    left.set_xticks(x_U, [f"{u}\n({table['users'][u]})" for u in users])
    left.set_ylabel("held-out reward accuracy")
    left.set_ylim(0, 1.05)
    left.legend(fontsize=8)
    bars = [*users, UNSEEN, "dpo"]
    colours = ["C0" if table["users"].get(b) == "long" else "C1" if b in users else "0.6" for b in bars]
    right.bar(range(len(bars)), [table["mean_chars"][b] for b in bars], color=colours)
    right.set_xticks(range(len(bars)), [b if b != "dpo" else "DPO\n(no user)" for b in bars], fontsize=8)
    right.set_ylabel("mean generated length (chars)")
    fig.suptitle(f"P-DPO on users who prefer long vs short answers ({table['num_prompts']} held-out prompts)")
    fig.savefig(path, dpi=110)
    plt.close(fig)
