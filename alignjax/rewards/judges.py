"""Judges for online CUT: callables that critique the policy's own responses.

A judge maps (prompts, responses) to one judgment per response: a natural-language
critique, or None when the response is satisfactory. Configs name them like rewards:
`{name: threshold, reward: {...}, threshold: 0.5, critique: "..."}`, or
`{name: python, function: "package.module:callable"}` for any callable of that shape
(an LLM judge, a unit-test runner, a human-feedback lookup).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Sequence

import numpy as np

from alignjax.rewards.functions import build_reward

Judge = Callable[[Sequence[str], Sequence[str]], list]


def threshold(reward: dict[str, Any], threshold: float, critique: str, below: bool = True) -> Judge:
    """Critique responses whose reward is below (or, with below=False, above) a threshold.

    `critique` may use {score} and {threshold}.
    """
    score_fn = build_reward(reward, where="judge.reward")

    def judge(prompts, responses):
        scores = np.asarray(score_fn(prompts, responses), np.float64)
        bad = scores < threshold if below else scores > threshold
        return [critique.format(score=s, threshold=threshold) if b else None for s, b in zip(scores, bad)]

    return judge


def python(function: str, **kwargs: Any) -> Judge:
    """`package.module:callable`, called as callable(prompts, responses, **kwargs)."""
    module_name, _, attr = function.partition(":")
    if not attr:
        raise ValueError(f"judge 'python': function={function!r} must look like 'package.module:callable'")
    fn = getattr(importlib.import_module(module_name), attr)
    return lambda prompts, responses: list(fn(prompts, responses, **kwargs))


JUDGES: dict[str, Callable[..., Judge]] = {"threshold": threshold, "python": python}


def build_judge(spec: dict[str, Any], where: str = "loss.cut.judge") -> Judge:
    if not isinstance(spec, dict) or "name" not in spec:
        raise ValueError(f"{where}: a judge is a mapping with a 'name' key, got {spec!r}")
    factory = JUDGES.get(spec["name"])
    if factory is None:
        raise ValueError(f"{where}: unknown judge {spec['name']!r}; known judges: {sorted(JUDGES)}")
    try:
        return factory(**{k: v for k, v in spec.items() if k != "name"})
    except TypeError as e:
        raise ValueError(f"{where}: judge {spec['name']!r}: {e}") from None
