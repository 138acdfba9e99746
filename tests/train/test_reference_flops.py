"""The model FLOPs a step counts hold a reference forward only where the step runs one: the
loss needs reference log-probs and reads no precomputed table. A LoRA step holds its frozen
base either way, but under SFT that base is only the policy's own forward."""

import json

import pytest
import train_helpers as th
import yaml

from alignjax.train import loop
from alignjax.train.config import load_config
from alignjax.train.methods import Objective
from alignjax.train.reference import runs_reference_forward

LORA = {"rank": 4, "alpha": 8.0, "targets": ["q_proj", "v_proj"]}


def _config(tmp_path, loss: dict, lora: bool = False, **data):
    tree = th.tiny_config(str(tmp_path / "run"))
    tree["stages"] = None
    tree["loss"] = loss
    tree["data"].update(eval=None, **data)
    tree["train"].update(steps=2, log_every=1, save_every=100)
    if lora:
        tree["model"]["lora"] = LORA
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tree))
    return load_config(str(path))


def test_a_reference_forward_runs_only_where_no_table_replaces_it(tmp_path):
    dpo = _config(tmp_path, {"type": "sigmoid", "beta": 0.1})
    table = _config(tmp_path, {"type": "sigmoid", "beta": 0.1, "reference": "precomputed"})
    needs, needs_not = Objective(fn=None, needs_reference=True), Objective(fn=None, needs_reference=False)
    assert runs_reference_forward(needs, dpo.loss) is True
    assert runs_reference_forward(needs, table.loss) is False
    assert runs_reference_forward(needs_not, dpo.loss) is False


@pytest.mark.slow
def test_a_lora_sft_step_counts_no_reference_forward(tmp_path, monkeypatch):
    cfg = _config(tmp_path, {"type": "sft"}, lora=True, record_type="sft", train="builtin:sft")
    original, counted = loop.step_flops, []

    def spy(model_cfg, rows, length, with_reference):
        counted.append((model_cfg, rows, length, with_reference))
        return original(model_cfg, rows, length, with_reference)

    monkeypatch.setattr(loop, "step_flops", spy)
    assert loop.run(cfg)["step"] == 2
    assert len(counted) == 2 and not any(with_reference for *_, with_reference in counted)
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        logged = [r["model_flops_per_step"] for r in map(json.loads, f) if "model_flops_per_step" in r]
    assert logged == [original(m, rows, length, False).total for m, rows, length, _ in counted]
    model_cfg, rows, length, _ = counted[0]
    assert model_cfg.lora_rank == 4
    flops = original(model_cfg, rows, length, with_reference=False)
    # The frozen base's forward and activation gradient and the adapters' 6 N_a: no reference term.
    assert flops.reference_per_token == 0
    assert flops.policy_per_token == 4 * flops.matmul_params + 6 * flops.adapter_params
    assert logged[0] < original(model_cfg, rows, length, with_reference=True).total
