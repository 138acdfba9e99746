"""KTO's built-in task: `conditioned_style`'s pairs taken apart into unpaired records.

Each pair becomes two records with the same conditioned prompt: its chosen answer
labelled desirable (`label: true`), its rejected answer undesirable. Nothing says which
answers belong together, so a model learns the rule (follow the stated preference) from
thumbs up and thumbs down alone. Held-out records use topics never seen in training.
"""

from __future__ import annotations

from typing import Any

from alignjax.tasks.conditioned_style import make_records, split_topics
from alignjax.tasks.jsonl import write_jsonl_files


def unpair(record: dict[str, Any]) -> list[dict[str, Any]]:
    """A pair -> its desirable and its undesirable record (TRL's `unpair_preference_dataset`)."""
    base = {k: record[k] for k in ("system", "user_info", "prompt", "condition")}
    return [
        dict(base, completion=record["chosen"], label=True),
        dict(base, completion=record["rejected"], label=False),
    ]


def write_task(out_dir: str, n_train: int = 4000, n_eval: int = 200, seed: int = 0) -> dict[str, str]:
    """Write train.jsonl and eval.jsonl (unpaired records, 2 per pair) and sft.jsonl (the
    desirable answers as SFT rows, for a warm-up stage)."""
    heldout, train_topics = split_topics(seed)
    train = make_records(train_topics, n_train, seed)
    files = {
        "train": [row for r in train for row in unpair(r)],
        "eval": [row for r in make_records(heldout, n_eval, seed + 1) for row in unpair(r)],
        "sft": [
            {k: r[k] for k in ("system", "user_info", "prompt", "condition")} | {"response": r["chosen"]}
            for r in train
        ],
    }
    return write_jsonl_files(out_dir, files)
