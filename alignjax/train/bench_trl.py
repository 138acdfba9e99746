"""`alignjax bench trl`: training-step time of alignjax and of TRL's DPOTrainer on the same
Hugging Face model, data and settings (sigmoid DPO, AdamW, float32, the same batches).

Needs PyTorch, transformers and TRL (the test extra). The model is a random Llama of
about 100M parameters built here and saved as a Hugging Face checkpoint with the byte
tokenizer, so both trainers read the same files and see the same token ids. Each side
runs `warmup` steps, then `steps` timed ones; compilation (alignjax) and the first
steps' allocations (PyTorch) are left out.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time

# ~100M parameters: 12 layers of width 768, untied 32k embeddings.
MODEL = {
    "model_type": "llama",
    "vocab_size": 32000,
    "hidden_size": 768,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_key_value_heads": 4,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
}
BETA, LR = 0.1, 1e-6


def _build_model(out_dir: str) -> int:
    import torch
    import transformers

    from alignjax.data.byte_tokenizer import make_byte_tokenizer

    tokenizer = make_byte_tokenizer()
    cfg = dict(MODEL, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    cfg["pad_token_id"] = tokenizer.pad_token_id
    config = transformers.AutoConfig.for_model(**cfg)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return sum(p.numel() for p in model.parameters())


def _write_pairs(path: str, n: int, max_length: int) -> None:
    """Plain-text pairs whose prompt + response fill `max_length` tokens (the byte tokenizer: a
    token a byte), so alignjax's length bucket and TRL's pad-to-longest hold the same tokens."""
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "omega", "kappa", "sigma", "theta"]

    def text(chars):
        out = ""
        while len(out) < chars:
            out += rng.choice(words) + " "
        return out[:chars]

    prompt, response = max_length // 8, max_length - max_length // 8 - 4  # BOS, EOS and margin
    with open(path, "w") as f:
        for _ in range(n):
            row = {
                "prompt": text(prompt),
                "chosen": " " + text(response - 1),
                "rejected": " " + text(response - 1),
            }
            f.write(json.dumps(row) + "\n")


def _trl_step_time(model_dir, data_path, batch_size, max_length, warmup, steps, out_dir) -> float:
    import datasets
    import torch
    import transformers
    import trl

    times = []

    class Timer(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - self.start)

    args = trl.DPOConfig(
        output_dir=out_dir,
        loss_type=["sigmoid"],
        beta=BETA,
        learning_rate=LR,
        lr_scheduler_type="linear",
        optim="adamw_torch",
        per_device_train_batch_size=batch_size,
        max_steps=warmup + steps,
        max_length=max_length,
        train_sampling_strategy="sequential",
        logging_steps=warmup + steps,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        bf16=False,
        seed=0,
    )
    with open(data_path) as f:
        rows = [json.loads(line) for line in f]
    load = lambda: transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)  # noqa: E731
    trainer = trl.DPOTrainer(
        model=load(),
        ref_model=load(),
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=transformers.AutoTokenizer.from_pretrained(model_dir),
        callbacks=[Timer()],
    )
    trainer.train()
    return sum(times[warmup:]) / len(times[warmup:])


def _alignjax_step_time(model_dir, data_path, batch_size, max_length, warmup, steps, run_dir) -> float:
    import yaml

    from alignjax.train.config import load_config
    from alignjax.train.loop import run

    # Two logging windows: the first (`warmup` steps) includes compilation, the second is timed.
    assert warmup == steps, "alignjax times whole logging windows: warmup and steps must be equal"
    config = {
        "run_dir": run_dir,
        "model": {"hf_path": model_dir},
        "data": {
            "train": data_path,
            "shuffle": False,
            "max_length": max_length,
            "max_prompt_length": max_length // 2,
            "buckets": [max_length],
        },
        "loss": {"type": "sigmoid", "beta": BETA},
        "optim": {"name": "adamw", "lr": LR, "schedule": "linear"},
        "train": {"steps": warmup + steps, "batch_size": batch_size, "log_every": steps, "save_every": 10**6},
        "logging": {"tensorboard": False, "progress_bar": False},
    }
    path = run_dir + ".yaml"
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    run(load_config(path))
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f][-1]["step_time_s"]


def bench_vs_trl(batch_size: int = 4, max_length: int = 512, steps: int = 5) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = os.path.join(tmp, "model")
        n_params = _build_model(model_dir)
        data_path = os.path.join(tmp, "pairs.jsonl")
        _write_pairs(data_path, 4 * batch_size * steps, max_length)
        ours = _alignjax_step_time(
            model_dir, data_path, batch_size, max_length, steps, steps, os.path.join(tmp, "run")
        )
        theirs = _trl_step_time(
            model_dir, data_path, batch_size, max_length, steps, steps, os.path.join(tmp, "trl")
        )
    return {
        "model_params": n_params,
        "batch_pairs": batch_size,
        "max_length": max_length,
        "timed_steps": steps,
        "alignjax_step_s": ours,
        "trl_step_s": theirs,
        "trl_over_alignjax": theirs / ours,
    }
