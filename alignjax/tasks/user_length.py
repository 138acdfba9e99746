"""P-DPO's synthetic task: users who prefer long answers and users who prefer short ones.

Every pair offers a short and a long answer to the same prompt (same topic, adjective
and register; the long one adds a clause). Half the users (`long_*`) choose the long
answer, half (`short_*`) the short one; nothing in the prompt says so, the preference
is a property of the user id alone. Each training pair is labelled twice, once by a
long-preferring and once by a short-preferring user, so without the user the labels
cancel exactly: vanilla DPO on the same records can do no better than chance per user,
while P-DPO's user tokens can fit every user. Held-out pairs and prompts use topics
never trained on; an unseen user gets the generic user's tokens.
"""

from __future__ import annotations

import random
from typing import Any

from alignjax.tasks.conditioned_style import ADJECTIVES, AXES, _answer, split_topics
from alignjax.tasks.jsonl import write_jsonl_files

USERS = {"long_a": "long", "long_b": "long", "short_a": "short", "short_b": "short"}


def _pairs(topics: list[str], n: int, rng: random.Random) -> list[dict[str, Any]]:
    """`n` prompts, each as two records: the same pair labelled by a long- and a short-preferring user."""
    by_group = {g: sorted(u for u, pref in USERS.items() if pref == g) for g in AXES["length"]}
    records = []
    for _ in range(n):
        topic, adjective = rng.choice(topics), rng.choice(ADJECTIVES)
        register = rng.choice(AXES["register"])
        answers = {length: _answer(topic, adjective, length, register) for length in AXES["length"]}
        for group, users in by_group.items():
            other = "long" if group == "short" else "short"
            records.append(
                {
                    "prompt": f"Tell me about the {topic}.",
                    "chosen": answers[group],
                    "rejected": answers[other],
                    "user_id": rng.choice(users),
                }
            )
    return records


def write_task(out_dir: str, n_train: int = 2000, n_eval: int = 100, seed: int = 0) -> dict[str, str]:
    """pdpo.jsonl (2 x n_train records with user_id), pdpo_eval.jsonl (held-out topics),
    sft.jsonl (every training prompt with its long and its short answer, no user: an SFT
    warm-up that leaves the length undecided) and eval_prompts.jsonl (held-out prompts)."""
    rng = random.Random(seed)
    heldout, train_topics = split_topics(seed)
    train = _pairs(train_topics, n_train, rng)
    files = {
        "pdpo": train,
        "pdpo_eval": _pairs(heldout, n_eval, rng),
        "sft": [{"prompt": r["prompt"], "response": r["chosen"]} for r in train],
        "eval_prompts": [{"prompt": f"Tell me about the {t}."} for t in heldout],
    }
    return write_jsonl_files(out_dir, files)
