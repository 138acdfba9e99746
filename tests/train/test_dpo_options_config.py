"""TRL's DPOConfig options as `loss:` keys: a bad value or combination is a config error that
names the key, raised when the config loads (before any model or data is read)."""

import math

import pytest
import yaml

from alignjax import cli

from alignjax.core import configlib
from alignjax.train import config as train_config


def _write(tmp_path, loss, stages=None, model=None):
    tree = {
        "run_dir": str(tmp_path / "run"),
        # Nothing here exists: an error about the loss must come before anything reads it.
        "model": {"hf_path": str(tmp_path / "no_model"), **(model or {})},
        "data": {"train": str(tmp_path / "no_data.jsonl")},
        "loss": loss,
    }
    if stages:
        tree["stages"] = stages
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tree))
    return str(path)


BAD = [
    ({"type": "sigmoid", "f_divergence_type": "kl"}, "loss.f_divergence_type='kl': use one of reverse_kl"),
    (
        {"type": ["sigmoid", "nca_pair"], "f_divergence_type": "forward_kl"},
        "loss.f_divergence_type='forward_kl' does not apply to loss types ['nca_pair']",
    ),
    (
        {"type": "sigmoid", "f_divergence_type": "alpha_divergence", "f_alpha_divergence_coef": math.inf},
        "loss.f_alpha_divergence_coef=inf must be finite",
    ),
    ({"type": "sigmoid", "ld_alpha": 1.5}, "loss.ld_alpha=1.5 must be in [0, 1]"),
    ({"type": "aot", "use_weighting": True}, "loss.use_weighting: loss types ['aot'] sort the batch"),
    (
        {"type": "sigmoid", "ld_alpha": 0.5, "reference": "precomputed"},
        "loss.ld_alpha needs the reference's log-probs split at each pair's shared length",
    ),
    ({"type": ["sigmoid", "sft"], "weights": [1.0]}, "loss.weights has 1 entries"),
    (
        {"type": "sigmoid", "sync_ref_model": True, "ref_model_mixup_alpha": 1.5},
        "loss.ref_model_mixup_alpha=1.5",
    ),
    ({"type": "sigmoid", "sync_ref_model": True, "ref_model_sync_steps": 0}, "loss.ref_model_sync_steps=0"),
    (
        {"type": "sigmoid", "sync_ref_model": True, "reference": "precomputed"},
        "loss.sync_ref_model moves the reference during training, so its log-probs cannot be precomputed",
    ),
    (
        {"type": "sigmoid", "sync_ref_model": True, "reference_free": True},
        "loss.sync_ref_model: loss.type='sigmoid' with loss.reference_free uses no reference model",
    ),
    (
        {"type": "simpo", "sync_ref_model": True},
        "loss.sync_ref_model: loss.type='simpo' uses no reference model",
    ),
]


@pytest.mark.parametrize("loss,message", BAD, ids=[m.split(" ")[0] for _, m in BAD])
def test_a_bad_option_is_a_config_error_naming_its_key(tmp_path, capsys, loss, message):
    path = _write(tmp_path, loss)
    with pytest.raises(configlib.ConfigError) as info:
        train_config.load_config(path)
    assert message in str(info.value)
    assert cli.main(["train", path]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and message in err[0], err


def test_a_moving_reference_is_refused_for_lora(tmp_path, capsys):
    path = _write(tmp_path, {"type": "sigmoid", "sync_ref_model": True}, model={"lora": {"rank": 4}})
    with pytest.raises(
        configlib.ConfigError, match="loss.sync_ref_model: a LoRA run's reference is its frozen base"
    ):
        train_config.load_config(path)
    assert cli.main(["train", path]) == 2
    # Without the sync, the same LoRA config loads.
    train_config.load_config(_write(tmp_path, {"type": "sigmoid"}, model={"lora": {"rank": 4}}))


def test_options_load_and_reach_the_loss_section(tmp_path):
    loss = {
        "type": ["sigmoid", "sft"],
        "f_divergence_type": "alpha_divergence",
        "f_alpha_divergence_coef": 0.3,
        "ld_alpha": 0.5,
        "use_weighting": True,
        "reference_free": True,
    }
    cfg = train_config.load_config(_write(tmp_path, loss))
    assert (cfg.loss.f_divergence_type, cfg.loss.f_alpha_divergence_coef) == ("alpha_divergence", 0.3)
    assert (cfg.loss.ld_alpha, cfg.loss.use_weighting, cfg.loss.reference_free) == (0.5, True, True)
    from alignjax.train.methods.dpo import dpo_config

    dpo = dpo_config(cfg.loss)
    assert (dpo.ld_alpha, dpo.use_weighting, dpo.f_divergence_type) == (0.5, True, "alpha_divergence")
    assert not dpo.needs_reference


def test_a_non_dpo_stage_ignores_the_options_like_beta(tmp_path):
    """An SFT warm-up stage under a base `loss:` that sets DPO options (as a recipe does)."""
    loss = {"type": "sigmoid", "use_weighting": True, "f_divergence_type": "js_divergence"}
    path = _write(tmp_path, loss, stages=[{"name": "sft", "loss.type": "sft"}, {"name": "dpo"}])
    cfg = train_config.load_config(path)
    names = [s.config.loss.names for s in train_config.stages(cfg)]
    assert names == [("sft",), ("sigmoid",)]
    # A stage is checked like the base.
    bad = _write(
        tmp_path, loss, stages=[{"name": "sft", "loss.type": "sft"}, {"name": "dpo", "loss.type": "bco_pair"}]
    )
    with pytest.raises(
        configlib.ConfigError,
        match=r"loss.f_divergence_type='js_divergence' does not apply to loss types \['bco_pair'\]",
    ):
        train_config.load_config(bad)
