"""SparsePO's sentiment-control task, in miniature: reviews whose chosen and rejected
answers differ only in a few sentiment-bearing words.

Every answer is one template, "The {item} was {w1}, and the {aspect} was {w2}.", with
two sentiment slots. The chosen answer fills both with positive lexicon words, the
rejected one with negative words; every other character is the same, so the tokens
that decide the preference are known by construction. The SFT warm-up fills each slot
with a positive or a negative word at random, so the reference model writes reviews of
either sentiment. A generation's reward is its lexicon sentiment score (`score`);
`lexicon_spans` says which characters of a text are sentiment-bearing.

Held-out pairs and prompts use items never trained on. Everything is ASCII, so the
byte tokenizer needs nothing else.
"""

from __future__ import annotations

import random
import re
from typing import Any

from alignjax.tasks.jsonl import write_jsonl_files

POSITIVE = "great lovely superb charming delightful wonderful pleasant brilliant".split()
NEGATIVE = "awful dreadful boring clumsy tedious terrible unpleasant dismal".split()
ITEMS = (
    "film novel album concert museum hotel cafe bakery game play garden park tour lecture "
    "podcast festival camera laptop phone bicycle kettle lamp sofa jacket backpack tent "
    "restaurant theater gallery zoo aquarium market train ferry cruise workshop course "
    "opera ballet circus comic magazine radio puzzle"
).split()
ASPECTS = "ending staff music price service design story pace food view sound light".split()

_WORD = re.compile(r"[a-z]+")
_SENTIMENT = {w: 1 for w in POSITIVE} | {w: -1 for w in NEGATIVE}


def lexicon_spans(text: str) -> list[tuple[int, int, int]]:
    """(start, end, polarity +1 / -1) of every whole lexicon word in `text` (case-insensitive)."""
    return [
        (m.start(), m.end(), _SENTIMENT[m[0]]) for m in _WORD.finditer(text.lower()) if m[0] in _SENTIMENT
    ]


def score(text: str) -> float:
    """Lexicon sentiment in [-1, 1]: (positive - negative) / lexicon words; 0 with none.

    Normalised, so repeating a positive word does not score higher than using it once."""
    polarities = [p for _, _, p in lexicon_spans(text)]
    return sum(polarities) / len(polarities) if polarities else 0.0


def answer(item: str, aspect: str, first: str, second: str) -> str:
    return f"The {item} was {first}, and the {aspect} was {second}."


def prompt(item: str) -> str:
    return f"Review the {item}."


def _pairs(items: list[str], n: int, rng: random.Random) -> list[dict[str, Any]]:
    records = []
    for _ in range(n):
        item, aspect = rng.choice(items), rng.choice(ASPECTS)
        good, bad = rng.sample(POSITIVE, 2), rng.sample(NEGATIVE, 2)
        records.append(
            {
                "prompt": prompt(item),
                "chosen": answer(item, aspect, *good),
                "rejected": answer(item, aspect, *bad),
            }
        )
    return records


def _mixed_answers(items: list[str], n: int, rng: random.Random) -> list[dict[str, Any]]:
    """SFT rows: each slot positive or negative at random, so the warm-up has no sentiment."""
    rows = []
    for _ in range(n):
        item, aspect = rng.choice(items), rng.choice(ASPECTS)
        words = [rng.choice(rng.choice((POSITIVE, NEGATIVE))) for _ in range(2)]
        rows.append({"prompt": prompt(item), "response": answer(item, aspect, *words)})
    return rows


def split_items(seed: int) -> tuple[list[str], list[str]]:
    """(held-out items, training items): a fifth of the items never appear in training."""
    items = sorted(set(ITEMS))
    random.Random(seed).shuffle(items)
    n_heldout = len(items) // 5
    return items[:n_heldout], items[n_heldout:]


def write_task(out_dir: str, n_train: int = 2000, n_eval: int = 200, seed: int = 0) -> dict[str, str]:
    """train.jsonl (pairs), eval.jsonl (held-out pairs on held-out items), sft.jsonl
    (mixed-sentiment answers to the training prompts) and eval_prompts.jsonl (one prompt
    per held-out item)."""
    rng = random.Random(seed)
    heldout, train_items = split_items(seed)
    files = {
        "train": _pairs(train_items, n_train, rng),
        "eval": _pairs(heldout, n_eval, rng),
        "sft": _mixed_answers(train_items, n_train, rng),
        "eval_prompts": [{"prompt": prompt(item)} for item in heldout],
    }
    return write_jsonl_files(out_dir, files)
