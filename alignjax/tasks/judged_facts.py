"""CUT's built-in task: judged answers whose single error is known by construction.

Each of a dozen topics has a number from 1 to 9, fixed by the task's seed, and a common
misconception, another number. Asked "Number of the cat?", a correct answer states the
number ("The cat is 3."); a wrong one (65% of the answers) is the same sentence with the
misconception (80% of the wrong answers) or another wrong number drawn at random, and a
judgment naming the error: "Wrong: 7." So the misconception is the likeliest answer
(52%, against 35% for the truth), as errors that people share are in real feedback data.
The wrong digit is the whole error, so its character span is recorded (`error_span`,
[start, end) in the response) and the tokens CUT flags can be checked against it: given
the judgment the digit is written out (the only digit in the context), so only the error
should look much likelier given the judgment than without it.

SFT on the same responses (judgments ignored) learns to repeat the misconception, even
greedily; CUT learns from the judgments not to. Generations are measured on the topics'
prompts (`fact_prompts.jsonl`, with the true number), since a number cannot be
inferred; `cut_eval.jsonl` holds fresh judged wrong answers drawn as the training ones.
"""

from __future__ import annotations

import random
from typing import Any

from alignjax.tasks.conditioned_style import split_topics
from alignjax.tasks.jsonl import write_jsonl_files

DIGITS = "123456789"
WRONG_SHARE = 0.65  # the fraction of wrong answers
MISCONCEPTION_SHARE = 0.8  # the fraction of wrong answers that state the topic's misconception
NUM_TOPICS = 12  # few enough that a tiny model learns every number within the recipe's steps


def prompt_for(topic: str) -> str:
    return f"Number of the {topic}?"


def answer(topic: str, digit: str) -> str:
    return f"The {topic} is {digit}."


def facts(topics: list[str], seed: int) -> dict[str, tuple[str, str]]:
    """topic -> (its true digit, its misconception: another digit)."""
    rng = random.Random(seed)
    known = {}
    for topic in topics:
        true = rng.choice(DIGITS)
        known[topic] = (true, rng.choice([d for d in DIGITS if d != true]))
    return known


def judged(topic: str, fact: tuple[str, str], rng: random.Random, is_wrong: bool) -> dict[str, Any]:
    true, misconception = fact
    record: dict[str, Any] = {"prompt": prompt_for(topic), "topic": topic, "truth": true}
    if not is_wrong:
        return record | {"response": answer(topic, true), "judgment": None}
    if rng.random() < MISCONCEPTION_SHARE:
        wrong = misconception
    else:
        wrong = rng.choice([d for d in DIGITS if d != true])
    response = answer(topic, wrong)
    start = response.rindex(wrong)
    return record | {
        "response": response,
        "judgment": f"Wrong: {wrong}.",
        "error_span": [start, start + len(wrong)],
    }


def write_task(out_dir: str, n_train: int = 4000, n_eval: int = 200, seed: int = 0) -> dict[str, str]:
    """cut.jsonl (judged answers, 65% wrong), sft.jsonl (the same responses without
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
        "fact_prompts": [
            {"prompt": prompt_for(t), "topic": t, "truth": known[t][0], "misconception": known[t][1]}
            for t in topics
        ],
    }
    return write_jsonl_files(out_dir, files)
