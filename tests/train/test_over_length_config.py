"""`data.over_length`: `auto` is the training method's choice (a reward model drops an
over-long pair as TRL's RewardTrainer does; every other method truncates, as TRL's
DPOTrainer does), an explicit `truncate` or `drop` wins, and any other value is an error
naming the key."""

import pytest

from alignjax.core import configlib
from alignjax.data.config import DataConfig
from alignjax.train.config import TrainConfig, data_config

CHOICES = [
    ("reward", None, "drop"),
    ("reward", "auto", "drop"),
    ("reward", "truncate", "truncate"),
    ("sigmoid", None, "truncate"),
    ("sigmoid", "drop", "drop"),
    ("sft", "auto", "truncate"),
]


@pytest.mark.parametrize("loss_type,given,expected", CHOICES)
def test_auto_is_the_method_choice_and_an_explicit_choice_wins(loss_type, given, expected):
    data = {} if given is None else {"over_length": given}
    cfg = configlib.from_dict(TrainConfig, {"loss": {"type": loss_type}, "data": data})
    resolved = data_config(cfg, [], 4)
    assert resolved.over_length == expected
    assert resolved.drops_over_length == (expected == "drop")


def test_auto_outside_training_truncates():
    assert DataConfig().over_length == "auto" and not DataConfig().drops_over_length


def test_an_unknown_choice_is_an_error_naming_the_key():
    cfg = DataConfig(sources=[{"path": "pairs.jsonl"}], over_length="cut")
    with pytest.raises(ValueError, match=r"^data\.over_length: 'cut': use auto, truncate, drop$"):
        cfg.validate()
