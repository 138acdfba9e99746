"""CUT's built-in task: judged answers whose single error is known by construction.

Every topic has a number from 1 to 9, fixed by the task's seed. Asked "What is the
number of the cat?", a correct answer states it; a wrong one is the same sentence with
a popular wrong number (one per topic, chosen more often than the right one) and a
judgment naming the error: "Wrong number: the cat is 3, not 7." The wrong digit is the
whole error, so its character span is recorded (`error_span`, [start, end) in the
response) and the tokens CUT flags can be checked against it.

Because the wrong answer is the more common one, SFT on the same responses (judgments
ignored) learns the misconception; CUT learns from the judgments not to say it.
Judged records of held-out topics (`cut_eval.jsonl`) test the flagging on numbers the
model never saw; generations are measured on the training topics' prompts
(`fact_prompts.jsonl`, with the true number), since a number cannot be inferred.
"""

from __future__ import annotations

import random
from typing import Any

from alignjax.tasks.conditioned_style import split_topics
from alignjax.tasks.jsonl import write_jsonl_files

DIGITS = "123456789"
WRONG_SHARE = 0.6  # the fraction of a topic's answers that repeat its misconception


def prompt_for(topic: str) -> str:
    return f"What is the number of the {topic}?"


def answer(topic: str, digit: str) -> str:
    return f"The number of the {topic} is {digit}."


def facts(topics: list[str], seed: int) -> dict[str, tuple[str, str]]:
    """topic -> (true digit, the popular wrong digit)."""
    rng = random.Random(seed)
    out = {}
    for topic in topics:
        true, wrong = rng.sample(DIGITS, 2)
        out[topic] = (true, wrong)
    return out


def judged(topic: str, true: str, wrong: str, is_wrong: bool) -> dict[str, Any]:
    record: dict[str, Any] = {"prompt": prompt_for(topic), "topic": topic, "truth": true}
    if not is_wrong:
        return record | {"response": answer(topic, true), "judgment": None}
    response = answer(topic, wrong)
    start = response.rindex(wrong)
    return record | {
        "response": response,
        "judgment": f"Wrong number: the {topic} is {true}, not {wrong}.",
        "error_span": [start, start + len(wrong)],
    }


def write_task(out_dir: str, n_train: int = 4000, n_eval: int = 200, seed: int = 0) -> dict[str, str]:
    """cut.jsonl (judged answers; 60% repeat the topic's misconception), sft.jsonl (the
    same responses without judgments), cut_eval.jsonl (judged wrong answers of held-out
    topics) and fact_prompts.jsonl (one prompt per training topic, with its number)."""
    rng = random.Random(seed)
    heldout, train_topics = split_topics(seed)
    known = facts(train_topics, seed)
    unknown = facts(heldout, seed + 1)
    train = []
    for _ in range(n_train):
        topic = rng.choice(train_topics)
        train.append(judged(topic, *known[topic], is_wrong=rng.random() < WRONG_SHARE))
    files = {
        "cut": train,
        "sft": [{"prompt": r["prompt"], "response": r["response"]} for r in train],
        "cut_eval": [
            judged(topic, *unknown[topic], is_wrong=True) | {"id": i}
            for i, topic in enumerate(rng.choice(heldout) for _ in range(n_eval))
        ],
        "fact_prompts": [{"prompt": prompt_for(t), "topic": t, "truth": known[t][0]} for t in train_topics],
    }
    return write_jsonl_files(out_dir, files)
