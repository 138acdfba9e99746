"""CUT's built-in task: judged answers whose single error is known by construction.

Each of a dozen topics has a number from 1 to 9, fixed by the task's seed. Asked
"Number of the cat?", a correct answer states it ("The cat is 3."); a wrong one (60% of
the answers) is the same sentence with another number, drawn at random, and a judgment
naming the error: "Wrong: 7." The wrong digit is the whole error, so its
character span is recorded (`error_span`, [start, end) in the response) and the tokens
CUT flags can be checked against it: without the judgment a wrong digit is one of eight
unlikely ones, with it the digit is written out (the only digit in the context), so
only the error should look much likelier given the judgment.

SFT on the same responses (judgments ignored) learns to say a wrong number 60% of the
time; CUT learns from the judgments not to. Generations are measured on the topics'
prompts (`fact_prompts.jsonl`, with the true number), since a number cannot be
inferred; `cut_eval.jsonl` holds fresh judged wrong answers on the same topics.
"""

from __future__ import annotations

import random
from typing import Any

from alignjax.tasks.conditioned_style import split_topics
from alignjax.tasks.jsonl import write_jsonl_files

DIGITS = "123456789"
WRONG_SHARE = 0.6  # the fraction of wrong answers
NUM_TOPICS = 12  # few enough that a tiny model learns every number within the recipe's steps


def prompt_for(topic: str) -> str:
    return f"Number of the {topic}?"


def answer(topic: str, digit: str) -> str:
    return f"The {topic} is {digit}."


def facts(topics: list[str], seed: int) -> dict[str, str]:
    """topic -> its true digit."""
    rng = random.Random(seed)
    return {topic: rng.choice(DIGITS) for topic in topics}


def judged(topic: str, true: str, rng: random.Random, is_wrong: bool) -> dict[str, Any]:
    record: dict[str, Any] = {"prompt": prompt_for(topic), "topic": topic, "truth": true}
    if not is_wrong:
        return record | {"response": answer(topic, true), "judgment": None}
    wrong = rng.choice([d for d in DIGITS if d != true])
    response = answer(topic, wrong)
    start = response.rindex(wrong)
    return record | {
        "response": response,
        "judgment": f"Wrong: {wrong}.",
        "error_span": [start, start + len(wrong)],
    }


def write_task(out_dir: str, n_train: int = 4000, n_eval: int = 200, seed: int = 0) -> dict[str, str]:
    """cut.jsonl (judged answers, 60% wrong), sft.jsonl (the same responses without
    judgments), cut_eval.jsonl (fresh judged wrong answers, with an `id`) and
    fact_prompts.jsonl (one prompt per topic, with its number)."""
    rng = random.Random(seed)
    topics = split_topics(seed)[1][:NUM_TOPICS]
    known = facts(topics, seed)
    train = []
    for _ in range(n_train):
        topic = rng.choice(topics)
        train.append(judged(topic, known[topic], rng, is_wrong=rng.random() < WRONG_SHARE))
    files = {
        "cut": train,
        "sft": [{"prompt": r["prompt"], "response": r["response"]} for r in train],
        "cut_eval": [
            judged(topic, known[topic], rng, is_wrong=True) | {"id": i}
            for i, topic in enumerate(rng.choice(topics) for _ in range(n_eval))
        ],
        "fact_prompts": [{"prompt": prompt_for(t), "topic": t, "truth": known[t]} for t in topics],
    }
    return write_jsonl_files(out_dir, files)
