"""LoRA DPO against TRL's DPOTrainer with a PEFT model, both starting from the same PEFT
adapter (so both references are that starting adapter), and the trained adapter exported
back to PEFT's format (`alignjax convert orbax-to-hf`, with and without `--merge`).
"""

import json
import os

import numpy as np
import pytest

trl = pytest.importorskip("trl")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
datasets = pytest.importorskip("datasets")

from hf_models import build_hf_model  # noqa: E402
from test_trl_tokenizers import _records, _save_tokenizer  # noqa: E402

STEPS, BATCH, LR, BETA = 5, 4, 5e-3, 0.1
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
    data_path = str(root / "pairs.jsonl")
    with open(data_path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)

    # TRL: a PeftModel with an existing adapter, no ref_model: its reference is a copy of the
    # starting adapter.
    trl_model = peft.PeftModel.from_pretrained(
        transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
        adapter_dir,
        is_trainable=True,
    )
    args = trl.DPOConfig(
        output_dir=str(root / "trl"),
        loss_type=["sigmoid"],
        beta=BETA,
        learning_rate=LR,
        lr_scheduler_type="linear",
        optim="adamw_torch",
        weight_decay=0.0,
        max_grad_norm=1.0,
        per_device_train_batch_size=BATCH,
        max_steps=STEPS,
        max_length=64,
        train_sampling_strategy="sequential",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        bf16=False,
        seed=0,
    )
    trainer = trl.DPOTrainer(
        model=trl_model,
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=transformers.AutoTokenizer.from_pretrained(model_dir),
    )
    trainer.train()
    trl_logged = [h for h in trainer.state.log_history if "loss" in h and "train_loss" not in h]

    import yaml

    from alignjax import cli

    run_dir = str(root / "alignjax")
    config = {
        "run_dir": run_dir,
        "model": {"hf_path": model_dir, "lora": {"from_peft": adapter_dir}},
        "data": {"train": data_path, "shuffle": False, "max_length": 64, "max_prompt_length": 32},
        "loss": {"type": "sigmoid", "beta": BETA},
        "optim": {"name": "adamw", "lr": LR, "schedule": "linear", "weight_decay": 0.0, "max_grad_norm": 1.0},
        "train": {"steps": STEPS, "batch_size": BATCH, "log_every": 1},
        "logging": {"tensorboard": False, "progress_bar": False},
    }
    with open(run_dir + ".yaml", "w") as f:
        yaml.safe_dump(config, f)
    assert cli.main(["train", run_dir + ".yaml"]) == 0
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        ours = [r for r in map(json.loads, f) if "loss" in r]
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
