"""Adding a method takes one module and one registry line; the trainer then runs it."""

import json

import numpy as np
import pytest
import train_helpers as th
import yaml

from alignjax.train.methods import registry


@pytest.mark.slow
def test_a_new_method_trains_after_one_register_line(tmp_path, monkeypatch):
    import toy_method

    monkeypatch.setattr(registry, "_METHODS", list(registry._METHODS))  # registered for this test only
    registry.register(toy_method.METHOD)

    from alignjax.train.config import load_config
    from alignjax.train.loop import run

    tree = th.tiny_config(str(tmp_path / "run"))
    tree["stages"] = None
    tree["loss"] = {"type": "length_weighted_sft", "length_weighted_sft": {"power": 1.0}}
    tree["data"].update(record_type="sft", train="builtin:sft", eval=None)
    tree["optim"]["lr"] = 3e-3
    tree["train"].update(steps=6, log_every=1, save_every=100)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tree))
    cfg = load_config(str(path))
    assert cfg.loss.section("length_weighted_sft").power == 1.0
    assert run(cfg)["step"] == 6

    records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 6 and all(np.isfinite(losses))
    assert all("toy/mean_length" in r for r in records if "loss" in r)
    assert losses[-1] < losses[0] - 0.5  # it learns (the byte model starts near ln 256 per token)
