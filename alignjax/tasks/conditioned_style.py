"""A built-in preference-conditioned task: the label depends on the stated preference.

Each pair offers two answers that differ along one axis, length (short vs long) or
register (formal vs casual). The user's stated preference (`user_info`, MetaAlign's
middle tier) decides which answer is chosen, so the same (prompt, A, B) appears with
opposite labels under opposite conditions. A model can only fit it by reading the
condition, which makes learning visible: held-out accuracy per condition, and the sign
of the implicit reward flipping with the condition.

Train and held-out pairs use disjoint topics, so held-out numbers measure the rule, not
memorised answers. Everything is ASCII so the byte tokenizer needs nothing else.
"""

from __future__ import annotations

import random
from typing import Any

from alignjax.tasks.jsonl import write_jsonl_files

SYSTEM = "Follow the user's stated preference."
CONDITIONS: dict[str, str] = {
    "short": "I prefer short answers.",
    "long": "I prefer long, detailed answers.",
    "formal": "Please answer formally.",
    "casual": "Keep it casual.",
}
AXES = {"length": ("short", "long"), "register": ("formal", "casual")}

TOPICS = (
    "cat dog river bridge garden piano candle forest violin ladder kettle lantern harbor "
    "meadow comet glacier desert orchard canyon island volcano tunnel castle market "
    "library bakery subway compass telescope anchor feather pebble thunder rainbow "
    "island quilt tractor mirror saddle hammer pillow blanket kitten rabbit parrot "
    "turtle beetle dolphin falcon walrus cactus tulip maple cedar willow lemon mango "
    "peach plum carrot onion pepper bread cheese honey coffee"
).split()
ADJECTIVES = "calm bright quiet sturdy gentle curious simple lovely useful ancient".split()


def _answer(topic: str, adjective: str, length: str, register: str) -> str:
    core = f"the {topic} is {adjective}"
    if length == "long":
        core += f", and many people find the {topic} worth a closer look every single day"
    if register == "formal":
        return f"Certainly. In my view, {core}."
    return f"Sure thing! Honestly, {core}, lol."


def make_records(topics: list[str], n: int, seed: int) -> list[dict[str, Any]]:
    """`n` pairs; each appears under one of its axis's two conditions, chosen at random."""
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        topic, adjective = rng.choice(topics), rng.choice(ADJECTIVES)
        axis = rng.choice(sorted(AXES))
        condition = rng.choice(AXES[axis])
        fixed = {"length": rng.choice(AXES["length"]), "register": rng.choice(AXES["register"])}
        answers = {}
        for value in AXES[axis]:
            style = dict(fixed, **{axis: value})
            answers[value] = _answer(topic, adjective, style["length"], style["register"])
        other = AXES[axis][1 - AXES[axis].index(condition)]
        records.append(
            {
                "system": SYSTEM,
                "user_info": CONDITIONS[condition],
                "prompt": f"Tell me about the {topic}.",
                "chosen": answers[condition],
                "rejected": answers[other],
                "condition": condition,
            }
        )
    return records


def flip_condition(record: dict[str, Any]) -> dict[str, Any]:
    """The same pair under the opposite condition: labels swap."""
    axis = next(a for a, values in AXES.items() if record["condition"] in values)
    opposite = AXES[axis][1 - AXES[axis].index(record["condition"])]
    return dict(
        record,
        user_info=CONDITIONS[opposite],
        condition=opposite,
        chosen=record["rejected"],
        rejected=record["chosen"],
    )


def _as_user_record(record: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in record.items() if k not in ("user_info", "system")}
    return dict(out, user_id=f"user_{record['condition']}")


def _judged_records(record: dict[str, Any]) -> list[dict[str, Any]]:
    base = {k: record[k] for k in ("system", "user_info", "prompt", "condition")}
    critique = f"The user said: {record['user_info']} This answer does not do that."
    return [
        dict(base, response=record["chosen"], judgment=None),
        dict(base, response=record["rejected"], judgment=critique),
    ]


def split_topics(seed: int) -> tuple[list[str], list[str]]:
    """(held-out topics, training topics): a fifth of the topics never appear in training."""
    topics = sorted(set(TOPICS))
    random.Random(seed).shuffle(topics)
    n_heldout = len(topics) // 5
    return topics[:n_heldout], topics[n_heldout:]


def write_task(out_dir: str, n_train: int = 4000, n_eval: int = 200, seed: int = 0) -> dict[str, str]:
    """Write train.jsonl, sft.jsonl (chosen answers as SFT rows), eval.jsonl,
    eval_flipped.jsonl (the same held-out pairs under the opposite conditions, labels
    swapped), pdpo.jsonl / pdpo_eval.jsonl (the condition as a user id instead of text)
    and cut.jsonl (every answer with a judgment, null when it follows the preference)."""
    heldout, train_topics = split_topics(seed)
    eval_records = make_records(heldout, n_eval, seed + 1)
    train = make_records(train_topics, n_train, seed)
    files = {
        "train": train,
        "sft": [
            {k: r[k] for k in ("system", "user_info", "prompt", "condition")} | {"response": r["chosen"]}
            for r in train
        ],
        "eval": eval_records,
        "eval_flipped": [flip_condition(r) for r in eval_records],
    }
    # P-DPO: the preference is a property of the user, never stated in the prompt.
    files["pdpo"] = [_as_user_record(r) for r in train]
    files["pdpo_eval"] = [_as_user_record(r) for r in eval_records]
    # CUT: each answer with a judgment of whether it follows the stated preference.
    files["cut"] = [row for r in train for row in _judged_records(r)]
    return write_jsonl_files(out_dir, files)
