"""A built-in multi-objective task for MO-ODPO: brevity against use of a keyword.

Prompts ask about a topic; two programmatic objectives conflict, since every use of the
keyword "ok" makes the answer one word longer:
  brevity  = -(number of characters) / 3                  (reward `length`, unit chars)
  keyword  = number of times the word "ok" appears, up to 4 (reward `keyword_count`, cap 4)
Each " ok" gains w_keyword and costs w_brevity (3 characters), so the best answer has no
"ok" when brevity weighs more and four when the keyword does. Brevity counts characters,
not words: counted in words, "ok,ok,ok" is one word and three keywords.
The SFT warm-up teaches the answer format with answers of random length and keyword
count, written under random objective weights that have nothing to do with them. So the
policy starts out ignoring the weights, and only online training (sampling, scoring,
preferring) can teach it to follow them. Held-out prompts use topics never trained on.
"""

from __future__ import annotations

import random

from alignjax.tasks.conditioned_style import ADJECTIVES, TOPICS
from alignjax.tasks.jsonl import write_jsonl_files

OBJECTIVES = ("brevity", "keyword")
WEIGHTS_TEMPLATE = "Objective weights: brevity {brevity:.0%}, keyword {keyword:.0%}."
REWARDS = (
    {"name": "length", "unit": "chars", "target": 0, "scale": 1 / 3},
    {"name": "keyword_count", "keywords": ["ok"], "whole_word": True, "cap": 4},
)


def _answer(rng: random.Random, topic: str) -> str:
    words = [f"The {topic} is {rng.choice(ADJECTIVES)}."]
    if rng.random() < 0.5:
        words.append(f"Many people like the {topic}.")
    rest = words[1:] + ["ok"] * rng.randint(0, 4)
    rng.shuffle(rest)  # the keyword can come anywhere after the first sentence
    return " ".join([words[0], *rest])


def write_task(
    out_dir: str, n_sft: int = 3000, n_prompts: int = 2000, n_eval: int = 24, seed: int = 0
) -> dict[str, str]:
    """sft.jsonl (random answers under random weights), prompts.jsonl, eval_prompts.jsonl."""
    rng = random.Random(seed)
    topics = sorted(set(TOPICS))
    rng.shuffle(topics)
    heldout, train = topics[: len(topics) // 5], topics[len(topics) // 5 :]
    files = {
        "sft": [
            {
                "prompt": f"Tell me about the {t}.",
                "weights": dict(zip(OBJECTIVES, (w := rng.random(), 1 - w))),
                "response": _answer(rng, t),
            }
            for t in (rng.choice(train) for _ in range(n_sft))
        ],
        "prompts": [{"prompt": f"Tell me about the {rng.choice(train)}."} for _ in range(n_prompts)],
        "eval_prompts": [{"prompt": f"Tell me about the {t}."} for t in heldout[:n_eval]],
    }
    return write_jsonl_files(out_dir, files)
