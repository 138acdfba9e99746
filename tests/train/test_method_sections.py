"""Each method owns its config: the DPO family's options are `loss:` keys declared once
(`DPOOptions`), a method's section is the config its loss reads, and a key of one method's
records is a key of its section, which the method hands to the data pipeline."""

import dataclasses
import logging

import pytest
import yaml

from alignjax import cli
from alignjax.core import configlib
from alignjax.data.config import DataConfig
from alignjax.losses.cut import CUTConfig
from alignjax.losses.dpo_combined import DPOOptions
from alignjax.losses.kto import KTOConfig
from alignjax.losses.personalized import PDPOConfig
from alignjax.losses.token_weighted import SparsePOConfig
from alignjax.train import config as train_config
from alignjax.train.config import LossSection, TrainConfig, data_config
from alignjax.train.methods.dpo import dpo_config


@pytest.fixture(autouse=True)
def _keep_logging(monkeypatch):
    # `alignjax train` reconfigures the root logger (force=True): in-process, its handler would
    # outlive the test and write later tests' log lines into their captured stderr.
    monkeypatch.setattr(logging, "basicConfig", lambda **kwargs: None)


def _write(tmp_path, data=None, stages=None):
    tree = {
        "run_dir": str(tmp_path / "run"),
        # Nothing here exists: the key error must come before anything reads them.
        "model": {"hf_path": str(tmp_path / "no_model")},
        "data": {"train": str(tmp_path / "no_data.jsonl"), **(data or {})},
        "loss": {"type": "sigmoid"},
    }
    if stages:
        tree["stages"] = stages
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tree))
    return str(path)


MOVED = [
    ("n_user_tokens", 2, "data.n_user_tokens moved: write loss.pdpo.n_user_tokens"),
    ("token_weights", True, "data.token_weights moved: write loss.sparsepo.weights: given"),
    ("cut_positive_score", 7.0, "data.cut_positive_score moved: write loss.cut.positive_score"),
    ("margin_field", "margin", "data.margin_field moved: write loss.reward.margin_field"),
]


@pytest.mark.parametrize("key,value,message", MOVED, ids=[m[0] for m in MOVED])
def test_a_method_data_key_under_data_names_its_key_in_the_method_section(
    tmp_path, capsys, key, value, message
):
    path = _write(tmp_path, data={key: value})
    with pytest.raises(configlib.ConfigError) as info:
        train_config.load_config(path)
    assert message in str(info.value)
    assert cli.main(["train", path]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and message in err[0], err

    plain = _write(tmp_path)
    with pytest.raises(configlib.ConfigError, match=message):
        train_config.load_config(plain, [f"data.{key}={value}"])
    staged = _write(tmp_path, stages=[{"name": "warmup", f"data.{key}": value}])
    with pytest.raises(configlib.ConfigError, match=rf"stages\[0\] \(warmup\): {message}"):
        train_config.load_config(staged)


DATA_OPTIONS = [
    ({"type": "pdpo", "pdpo": {"n_user_tokens": 3}}, "n_user_tokens", 3),
    ({"type": "sparsepo", "sparsepo": {"weights": "given"}}, "token_weights", True),
    ({"type": "cut", "cut": {"positive_score": 7.0}}, "cut_positive_score", 7.0),
    ({"type": "reward", "reward": {"margin_field": "margin"}}, "margin_field", "margin"),
]


@pytest.mark.parametrize("loss,field,value", DATA_OPTIONS, ids=[d[1] for d in DATA_OPTIONS])
def test_the_method_that_reads_a_data_key_hands_it_to_the_data_pipeline(loss, field, value):
    assert getattr(DataConfig(), field) != value
    cfg = configlib.from_dict(TrainConfig, {"loss": loss})
    assert getattr(data_config(cfg, [], 4), field) == value
    # The same section under another method's stage (an SFT warm-up): the data's default.
    other = configlib.from_dict(TrainConfig, {"loss": {**loss, "type": "sft"}})
    assert getattr(data_config(other, [], 4), field) == getattr(DataConfig(), field)


def test_tdpo_reads_no_given_token_weights():
    cfg = configlib.from_dict(TrainConfig, {"loss": {"type": "tdpo", "sparsepo": {"weights": "given"}}})
    assert data_config(cfg, [], 4).token_weights is False  # TDPO weighs every token 1


def test_the_dpo_options_are_the_loss_section_keys_and_reach_the_loss_as_given():
    names = [f.name for f in dataclasses.fields(DPOOptions)]
    assert set(names) <= {f.name for f in dataclasses.fields(LossSection)}
    given = {
        "beta": 0.3,
        "label_smoothing": 0.1,
        "discopop_tau": 0.07,
        "simpo_beta": 2.5,
        "simpo_gamma": 0.7,
        "orpo_lambda": 0.2,
        "f_divergence_type": "alpha_divergence",
        "f_alpha_divergence_coef": 0.25,
        "ld_alpha": 0.5,
        "use_weighting": True,
        "reference_free": True,
    }
    assert sorted(given) == sorted(names)  # every option, each away from its default
    assert all(given[n] != getattr(DPOOptions(), n) for n in names)
    loss = configlib.from_dict(
        LossSection, {"type": ["sigmoid", "sft"], "weights": [1, 0.5], **given}, "loss"
    )
    dpo = dpo_config(loss)
    assert {n: getattr(dpo, n) for n in names} == given
    assert dpo.loss_type == ("sigmoid", "sft") and dpo.loss_weights == (1.0, 0.5)


@pytest.mark.parametrize(
    "name,loss_config",
    [("cut", CUTConfig), ("sparsepo", SparsePOConfig), ("pdpo", PDPOConfig), ("kto", KTOConfig)],
)
def test_a_method_section_is_the_config_its_loss_reads(name, loss_config):
    assert isinstance(LossSection().section(name), loss_config)


@pytest.mark.parametrize(
    "loss,message",
    [
        ({"type": "cut", "cut": {"form": "nope"}}, "loss.cut.form='nope'"),
        ({"type": "cut", "cut": {"form": "code", "g": 1.0}}, "loss.cut.form='code' reproduces"),
        ({"type": "sparsepo", "sparsepo": {"lam_u": -1.0}}, "loss.sparsepo.lam_u=-1.0"),
        ({"type": "sparsepo", "beta": 0.0}, "loss.beta=0.0 must be > 0"),
        ({"type": "pdpo", "pdpo": {"n_user_tokens": 2, "alpha": 1.5}}, "loss.pdpo.alpha=1.5"),
        ({"type": "pdpo"}, "loss.type=pdpo needs loss.pdpo.n_user_tokens > 0"),
        ({"type": "pdpo", "pdpo": {"n_user_tokens": 2}, "label_smoothing": 0.5}, "loss.label_smoothing=0.5"),
    ],
)
def test_a_bad_section_value_is_named_when_the_config_loads(loss, message):
    with pytest.raises(ValueError) as info:
        configlib.from_dict(LossSection, loss, "loss")
    assert message in str(info.value)
