"""A reward model trained by alignjax, exported, is an MO-ODPO `reward_model` reward.

Trains `loss.type: reward` for a few steps on the built-in task, exports the run with
`alignjax convert orbax-to-hf`, builds the reward from the exported directory as an
MO-ODPO config names it, checks its scores against transformers' classifier on the
same token ids, and runs MO-ODPO steps with it as one objective's reward.
"""

import json
import os
import sys

import numpy as np
import pytest
import torch
import transformers
import yaml

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "train"))
import train_helpers as th  # noqa: E402

from alignjax import cli  # noqa: E402
from alignjax.rewards.functions import build_reward  # noqa: E402

TOL = 1e-5


@pytest.mark.slow
def test_exported_reward_model_drives_the_reward_model_reward(tmp_path):
    tree = th.tiny_config(str(tmp_path / "run"))
    tree["stages"] = None
    tree["data"]["eval"] = None
    tree["loss"] = {"type": "reward"}
    # The tiny config's rows are shorter than the task's pairs, which a reward model drops.
    tree["data"]["over_length"] = "truncate"
    tree["train"].update(steps=4, save_every=4, log_every=1)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tree))
    assert cli.main(["train", str(config)]) == 0
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert all(np.isfinite(r["loss"]) for r in records if "loss" in r)

    out = tmp_path / "hf"
    assert cli.main(["convert", "orbax-to-hf", str(tmp_path / "run" / "checkpoints"), str(out)]) == 0
    with open(out / "config.json") as f:
        assert json.load(f)["architectures"] == ["LlamaForSequenceClassification"]

    reward = build_reward({"name": "reward_model", "path": str(out), "batch_size": 2})
    prompts = ["Describe a kettle.", "Tell me about a comet.", "Hi"]
    responses = ["A kettle boils water.", "A comet is an icy body with a long bright tail.", "Hello!"]
    ours = reward(prompts, responses)

    hf_model = transformers.AutoModelForSequenceClassification.from_pretrained(str(out), dtype=torch.float32)
    rows = reward.token_ids(prompts, responses)
    length = max(len(r) for r in rows)
    pad = hf_model.config.pad_token_id
    tokens = torch.tensor([r + [pad] * (length - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (length - len(r)) for r in rows])
    with torch.no_grad():
        expected = hf_model(input_ids=tokens, attention_mask=mask).logits[:, 0].numpy()
    assert ours.dtype == np.float32 and ours.shape == (3,)
    assert np.ptp(expected) > 1e-3  # distinct scores: the comparison is not of constants
    np.testing.assert_allclose(ours, expected, atol=TOL, rtol=0)

    # ... and drives an MO-ODPO run: the keyword objective's reward swapped for this model.
    rewards = (
        f"[{{name: length, unit: chars, target: 0, scale: 0.3333}}, {{name: reward_model, path: {out}}}]"
    )
    mo_dir = tmp_path / "mo"
    args = [
        "train",
        os.path.join(th.REPO, "configs", "mo_odpo_quickstart.yaml"),
        f"run_dir={mo_dir}",
        f"loss.mo_odpo.rewards={rewards}",
        f"model.preset_overrides={json.dumps(tree['model']['preset_overrides'])}",
        f"seed={tree['seed']}",
        "loss.mo_odpo.num_samples=2",
        "loss.mo_odpo.max_new_tokens=8",
        "train.batch_size=4",
        "stages.0.train.steps=1",
        "stages.1.train.steps=2",
        "train.log_every=1",
        "logging.progress_bar=false",
        "logging.tensorboard=false",
    ]
    assert cli.main(args) == 0
    with open(mo_dir / "metrics.jsonl") as f:
        online = [r for r in map(json.loads, f) if "loss" in r and r["step"] > 1]
    assert [r["step"] for r in online] == [2, 3]
    assert all(np.isfinite(r["loss"]) for r in online)
    # The samples were scored by the reward model (a real-valued score, not a count).
    assert all(np.isfinite(r["online/score/keyword"]) and r["online/score/keyword"] != 0 for r in online)
