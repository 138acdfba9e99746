"""LoRA DPO against TRL's DPOTrainer with a PEFT model, both starting from the same PEFT
adapter (so both references are that starting adapter), and the trained adapter exported
back to PEFT's format (`alignjax convert orbax-to-hf`, with and without `--merge`).
"""

import json
import os

import numpy as np
import pytest

import trl_harness as h  # noqa: E402
from trl_harness import torch, transformers, trl  # noqa: E402

peft = pytest.importorskip("peft")

from hf_models import build_hf_model  # noqa: E402
from test_trl_tokenizers import _records, _save_tokenizer  # noqa: E402

STEPS, BATCH, LR, BETA = 5, 4, 5e-3, 0.1
RUN = h.Run(STEPS, BATCH, LR)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora_peft")
    model_dir, adapter_dir = str(root / "base"), str(root / "adapter")
    build_hf_model("llama2", model_dir)
    _save_tokenizer("adds_bos", model_dir)
    base = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    # A trained-looking start: B is not zero, so the adapter changes the model.
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False)
    torch.manual_seed(0)
    peft.get_peft_model(base, config).save_pretrained(adapter_dir)

    rows = _records("plain", STEPS * BATCH, seed=5)
    data_path = h.write_jsonl(root / "pairs.jsonl", rows)

    # TRL: a PeftModel with an existing adapter, no ref_model: its reference is a copy of the
    # starting adapter.
    trl_model = peft.PeftModel.from_pretrained(
        transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
        adapter_dir,
        is_trainable=True,
    )
    args = RUN.trl_args(trl.DPOConfig, root / "trl", loss_type=["sigmoid"], beta=BETA)
    trl_logged, _ = h.trl_run(trl.DPOTrainer, args, trl_model, rows, model_dir=model_dir)

    run_dir = str(root / "alignjax")
    config = RUN.alignjax_config(
        run_dir,
        model_dir,
        data_path,
        {"type": "sigmoid", "beta": BETA},
        model={"lora": {"from_peft": adapter_dir}},
    )
    ours = h.alignjax_run(config)
    return dict(
        root=root, model_dir=model_dir, run_dir=run_dir, trl=trl_logged, ours=ours, trl_model=trl_model
    )


@pytest.mark.slow
def test_lora_dpo_matches_trl_with_a_peft_model_step_by_step(runs):
    trl_loss = np.array([r["loss"] for r in runs["trl"]])
    our_loss = np.array([r["loss"] for r in runs["ours"]])
    assert len(our_loss) == len(trl_loss) == STEPS
    assert trl_loss[0] == pytest.approx(np.log(2), abs=1e-6)  # the reference is the starting adapter
    assert np.ptp(trl_loss) > 1e-3
    np.testing.assert_allclose(our_loss, trl_loss, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(
        [r["rewards/margins"] for r in runs["ours"]], [r["rewards/margins"] for r in runs["trl"]], atol=2e-5
    )


@pytest.mark.slow
def test_trained_adapter_exports_to_peft_and_merges(runs, tmp_path):
    from alignjax import cli

    tokens = torch.tensor([[1, 7, 9, 11, 13, 20, 31, 40]])
    ckpt = os.path.join(runs["run_dir"], "checkpoints")
    adapter_out, merged_out = str(tmp_path / "adapter"), str(tmp_path / "merged")
    assert cli.main(["convert", "orbax-to-hf", ckpt, adapter_out]) == 0
    assert cli.main(["convert", "orbax-to-hf", ckpt, merged_out, "--merge"]) == 0
    with open(os.path.join(adapter_out, "adapter_config.json")) as f:
        config = json.load(f)
    assert (
        config["r"] == 4 and config["lora_alpha"] == 8 and sorted(config["target_modules"]) == sorted(TARGETS)
    )
    assert config["base_model_name_or_path"] == runs["model_dir"]

    with torch.no_grad():
        base = transformers.AutoModelForCausalLM.from_pretrained(runs["model_dir"], dtype=torch.float32)
        exported = peft.PeftModel.from_pretrained(base, adapter_out)(tokens).logits
        merged = transformers.AutoModelForCausalLM.from_pretrained(merged_out, dtype=torch.float32)(
            tokens
        ).logits
        trl_trained = runs["trl_model"].eval()(tokens).logits
    np.testing.assert_allclose(merged.numpy(), exported.numpy(), atol=1e-4)
    # Five steps on both sides: the adapters TRL trained give the same model.
    assert float((exported - trl_trained).abs().max()) < 1e-3


@pytest.mark.slow
def test_generate_from_a_lora_checkpoint_equals_its_merged_export(runs, tmp_path, capsys):
    from alignjax import cli

    ckpt = os.path.join(runs["run_dir"], "checkpoints")
    merged = str(tmp_path / "merged")
    assert cli.main(["convert", "orbax-to-hf", ckpt, merged, "--merge"]) == 0
    capsys.readouterr()
    prompt = ["--raw", "--prompt", "w1 w2 w3", "--max-new-tokens", "12"]
    assert cli.main(["generate", ckpt, *prompt]) == 0
    from_adapters = capsys.readouterr().out
    assert cli.main(["generate", merged, *prompt]) == 0
    from_merged = capsys.readouterr().out
    assert from_adapters.strip() and from_adapters == from_merged
