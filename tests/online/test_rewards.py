"""Program rewards and the registry, against hand-computed values."""

import numpy as np
import pytest

from alignjax.rewards.functions import REWARDS, build_reward

PROMPTS = ["q1", "q2", "q3"]
RESPONSES = ["Hello world", "The answer is <answer>42</answer>", "cats, Cats and CATS; dog"]


def _score(spec):
    out = build_reward(spec)(PROMPTS, RESPONSES)
    assert out.dtype == np.float32 and out.shape == (3,)
    return out.tolist()


def test_length_in_chars_words_and_distance_to_target():
    assert _score({"name": "length"}) == [11, 33, 24]
    assert _score({"name": "length", "unit": "words"}) == [2, 4, 5]
    assert _score({"name": "length", "unit": "words", "target": 4}) == [-2, 0, -1]


def test_keyword_presence_and_count():
    assert _score({"name": "keyword_presence", "keywords": ["cat", "dog"]}) == [0, 0, 1]
    assert _score({"name": "keyword_presence", "keywords": ["answer", "world"]}) == [0.5, 0.5, 0]
    assert _score({"name": "keyword_count", "keywords": ["cats"]}) == [0, 0, 3]
    assert _score({"name": "keyword_count", "keywords": ["cats"], "case_sensitive": True}) == [0, 0, 1]
    # "answer", "<answer>" and "</answer>" are whole words; "cats" contains "cat" but is not one.
    whole = {"name": "keyword_count", "keywords": ["cat", "answer"], "whole_word": True}
    assert _score(whole) == [0, 3, 0]


def test_cap_then_decay_then_scale():
    count = {"name": "keyword_count", "keywords": ["cats"]}  # raw counts 0, 0, 3
    assert _score({**count, "cap": 2}) == [0, 0, 2]
    # each further occurrence is worth half the one before: 1 + 0.5 + 0.25 for three
    np.testing.assert_allclose(_score({**count, "decay": 0.5}), [0, 0, 1.75], rtol=1e-6)
    np.testing.assert_allclose(_score({**count, "cap": 2, "decay": 0.5, "scale": 4}), [0, 0, 6], rtol=1e-6)
    with pytest.raises(ValueError, match=r"rewards\[1\]: reward decay must be in \(0, 1\)"):
        build_reward({**count, "decay": 1.5}, where="rewards[1]")
    with pytest.raises(ValueError, match="decay must be a number"):
        build_reward({**count, "decay": "fast"})


def test_regex_format_full_or_partial_match():
    assert _score({"name": "regex_format", "pattern": r".*<answer>\d+</answer>"}) == [0, 1, 0]
    assert _score({"name": "regex_format", "pattern": r"<answer>", "full_match": False}) == [0, 1, 0]


def test_registry_errors_are_actionable():
    with pytest.raises(ValueError, match="known rewards: .*length"):
        build_reward({"name": "lenght"})
    with pytest.raises(ValueError, match=r"unknown arguments \['units'\]"):
        build_reward({"name": "length", "units": "words"})
    with pytest.raises(ValueError, match="keywords"):
        build_reward({"name": "keyword_count"})
    with pytest.raises(ValueError, match="not a valid regex"):
        build_reward({"name": "regex_format", "pattern": "("})
    with pytest.raises(ValueError, match="2 responses"):
        build_reward({"name": "length"})(PROMPTS, RESPONSES[:2])
    assert {"length", "keyword_presence", "keyword_count", "regex_format", "reward_model"} <= set(REWARDS)
