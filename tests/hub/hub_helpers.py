"""What the Hub tests share: uploads through the real client, and tiny training runs."""

from __future__ import annotations

import json
import os

import yaml
from hub_server import TOKEN


def upload(folder: str, repo_id: str, *, repo_type: str = "model", revision: str | None = None) -> str:
    """Uploads `folder` as a user would (`huggingface_hub`, with a token); returns the commit SHA."""
    from huggingface_hub import HfApi

    api = HfApi(token=TOKEN)
    api.create_repo(repo_id, repo_type=repo_type, exist_ok=True)
    if revision:
        api.create_branch(repo_id, repo_type=repo_type, branch=revision, exist_ok=True)
    return api.upload_folder(repo_id=repo_id, repo_type=repo_type, folder_path=folder, revision=revision).oid


def write_pairs(path, n: int = 12, seed: int = 3) -> str:
    from trl_harness import random_pairs

    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in random_pairs(n, seed=seed))
    return str(path)


def run_config(run_dir, model: dict, train_data, *, steps: int = 2, **sections) -> dict:
    """A tiny DPO run: batch 4, a checkpoint at the last step, losses at every step."""
    from trl_harness import MAX_LENGTH, MAX_PROMPT_LENGTH

    tree = {
        "run_dir": str(run_dir),
        "model": model,
        "data": {"train": train_data, "max_length": MAX_LENGTH, "max_prompt_length": MAX_PROMPT_LENGTH},
        "loss": {"type": "sigmoid", "beta": 0.1},
        "optim": {"name": "adamw", "lr": 3e-3},
        "train": {"steps": steps, "batch_size": 4, "log_every": 1, "save_every": steps},
        "logging": {"tensorboard": False, "progress_bar": False},
    }
    for name, values in sections.items():
        tree[name] = {**tree.get(name, {}), **values}
    return tree


def train(tree: dict, *overrides: str) -> int:
    """`alignjax train` in this process on `tree` (written beside its run directory)."""
    from alignjax import cli

    path = str(tree["run_dir"]) + ".yaml"
    with open(path, "w") as f:
        yaml.safe_dump(tree, f)
    return cli.main(["train", path, *overrides])


def losses(run_dir) -> dict[int, float]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}
