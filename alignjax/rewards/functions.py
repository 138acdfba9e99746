"""Reward functions for online training, built by name from config.

Every reward has one signature, `reward(prompts, responses) -> float32 [N]`, whether it
is a program (length, keywords, a format regex) or a reward model, so MO-ODPO can weight
any K of them alike. A config names each one with its keyword arguments:

  rewards:
    - {name: reward_model, path: /ckpt/helpful-rm, batch_size: 16}   # or path: ORG/NAME (the Hub)
    - {name: length, unit: words, target: 120}
    - {name: regex_format, pattern: "(?s)<answer>.*</answer>"}
"""

from __future__ import annotations

import inspect
import re
from typing import Any, Callable, Protocol, Sequence

import numpy as np


class Reward(Protocol):
    def __call__(self, prompts: list[str], responses: list[str]) -> np.ndarray: ...


def _check_pair(name: str, prompts: Sequence[str], responses: Sequence[str]) -> None:
    if len(prompts) != len(responses):
        raise ValueError(f"reward {name!r}: {len(prompts)} prompts but {len(responses)} responses")


def _per_response(name: str, score: Callable[[str], float]) -> Reward:
    """A reward that looks only at the response, scored one at a time."""

    def reward(prompts: list[str], responses: list[str]) -> np.ndarray:
        _check_pair(name, prompts, responses)
        return np.asarray([score(r) for r in responses], np.float32).reshape(len(responses))

    reward.__name__ = name
    return reward


_LENGTH_UNITS = ("chars", "words")


def length(unit: str = "chars", target: int | None = None) -> Reward:
    """The response length; with `target`, minus its distance from the target instead."""
    if unit not in _LENGTH_UNITS:
        raise ValueError(f"reward 'length': unit={unit!r} is not one of {_LENGTH_UNITS}")

    def score(response: str) -> float:
        n = len(response) if unit == "chars" else len(response.split())
        return float(n) if target is None else -abs(float(n - target))

    return _per_response("length", score)


def _keyword_pattern(keywords: Sequence[str], case_sensitive: bool, whole_word: bool, who: str):
    if isinstance(keywords, str) or not keywords:
        raise ValueError(f"reward {who!r}: keywords must be a non-empty list of strings, got {keywords!r}")
    flags = 0 if case_sensitive else re.IGNORECASE
    wrap = (lambda k: rf"\b{re.escape(k)}\b") if whole_word else re.escape
    return [re.compile(wrap(k), flags) for k in keywords]


def keyword_presence(
    keywords: Sequence[str], case_sensitive: bool = False, whole_word: bool = False
) -> Reward:
    """The fraction of `keywords` that appear at least once (1.0 = all of them)."""
    patterns = _keyword_pattern(keywords, case_sensitive, whole_word, "keyword_presence")
    return _per_response(
        "keyword_presence", lambda r: sum(bool(p.search(r)) for p in patterns) / len(patterns)
    )


def keyword_count(keywords: Sequence[str], case_sensitive: bool = False, whole_word: bool = False) -> Reward:
    """The total number of (non-overlapping) occurrences of all `keywords`."""
    patterns = _keyword_pattern(keywords, case_sensitive, whole_word, "keyword_count")
    return _per_response("keyword_count", lambda r: float(sum(len(p.findall(r)) for p in patterns)))


def regex_format(pattern: str, full_match: bool = True) -> Reward:
    """1.0 when the response matches `pattern` (all of it, or anywhere if not full_match)."""
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"reward 'regex_format': pattern {pattern!r} is not a valid regex ({e})") from None
    match = compiled.fullmatch if full_match else compiled.search
    return _per_response("regex_format", lambda r: float(match(r) is not None))


def reward_model(
    path: str,
    batch_size: int = 8,
    max_length: int = 2048,
    label: int = 0,
    chat_template: bool | None = None,
    dtype: str = "float32",
    scan_layers: bool = False,
    revision: str | None = None,
) -> Reward:
    """A `*ForSequenceClassification` checkpoint (a directory, or a Hub name at `revision`);
    see `reward_model.ModelReward`."""
    from alignjax.rewards.reward_model import ModelReward

    return ModelReward(
        path,
        batch_size=batch_size,
        max_length=max_length,
        label=label,
        chat_template=chat_template,
        dtype=dtype,
        param_dtype=dtype,
        scan_layers=scan_layers,
        revision=revision,
    )


REWARDS: dict[str, Callable[..., Reward]] = {
    "length": length,
    "keyword_presence": keyword_presence,
    "keyword_count": keyword_count,
    "regex_format": regex_format,
    "reward_model": reward_model,
}


def build_reward(spec: dict[str, Any], where: str = "rewards") -> Reward:
    """`{"name": ..., "scale": s, **kwargs}` -> the reward; `where` names the config entry.

    `cap` bounds the raw reward from above (so more of a good thing stops paying);
    `decay` d (0 < d < 1) gives diminishing returns, each further unit worth d times the
    one before: v -> (1 - d**v) / (1 - d), so a count of 1 scores 1, 2 scores 1 + d, ...;
    then `scale` (default 1) multiplies it, so objectives on different units (words,
    counts, model logits) can be scalarised with comparable weights. With decay, the best
    count under a weighted sum against a per-unit cost moves with the weights instead of
    jumping between none and the cap.
    """
    if not isinstance(spec, dict) or "name" not in spec:
        raise ValueError(f"{where}: a reward is a mapping with a 'name' key, got {spec!r}")
    kwargs = {k: v for k, v in spec.items() if k not in ("name", "scale", "cap", "decay")}
    scale, cap, decay = spec.get("scale", 1.0), spec.get("cap"), spec.get("decay")
    for key, value in (("scale", scale), ("cap", cap), ("decay", decay)):
        if key != "scale" and value is None:
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ValueError(f"{where}: reward {key} must be a number, got {value!r}")
    if decay is not None and not 0 < decay < 1:
        raise ValueError(
            f"{where}: reward decay must be in (0, 1) (each unit worth d times the last), got {decay!r}"
        )
    factory = REWARDS.get(spec["name"])
    if factory is None:
        raise ValueError(f"{where}: unknown reward {spec['name']!r}; known rewards: {sorted(REWARDS)}")
    signature = inspect.signature(factory)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    unknown = sorted(set(kwargs) - set(signature.parameters))
    if unknown and not takes_any:
        raise ValueError(
            f"{where}: reward {spec['name']!r} got unknown arguments {unknown}; it takes "
            f"{list(signature.parameters)}"
        )
    try:
        signature.bind(**kwargs)
    except TypeError as e:
        raise ValueError(f"{where}: reward {spec['name']!r}: {e}") from None
    reward = factory(**kwargs)
    if scale == 1.0 and cap is None and decay is None:
        return reward

    def adjusted(prompts, responses):
        values = np.asarray(reward(prompts, responses), np.float32)
        if cap is not None:
            values = np.minimum(values, np.float32(cap))
        if decay is not None:  # in float64: d**v for v near 0 loses digits in float32
            values = ((1.0 - decay ** values.astype(np.float64)) / (1.0 - decay)).astype(np.float32)
        return values * np.float32(scale)

    return adjusted
