"""`alignjax bench trl`: training-step time and tokens/s of alignjax and of TRL's DPOTrainer
on the same Hugging Face model, data and settings (sigmoid DPO, AdamW).

Needs PyTorch, transformers and TRL (the test extra). The model is random: by default a
Llama of about 100M parameters (`MODEL`), else an alignjax preset with its overrides,
initialised here once and saved as a Hugging Face checkpoint with the byte tokenizer, so
both trainers read the same weights and see the same token ids. Each side runs `warmup`
steps, then `steps` timed ones; compilation (alignjax) and the first steps' allocations
(PyTorch) are left out. Tokens/s counts the tokens of the sequences, padding left out, on
both sides.

Precision: float32 everywhere, or bfloat16 compute over float32 parameters (alignjax's
`model.dtype`; TRL's `bf16=True` autocast), each reference in the compute dtype (alignjax's
`model.reference_dtype` default). TRL runs on CUDA when PyTorch sees a GPU, else on the
CPU, and first: its cached GPU memory is returned before JAX allocates.

Ragged lengths (`lengths="ragged"`) compare each trainer's way past padding: alignjax packs
sequences into rows, TRL's DPOTrainer pads each batch to its longest sequence (its
`padding_free` option warns and falls back to that padding in TRL 1.16).
"""

from __future__ import annotations

import gc
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


def hf_config(preset: str | None, overrides: list[str]) -> dict:
    """The config.json of the benchmark's model: `MODEL`, or `preset` with its KEY=VALUE
    overrides (YAML values, as `model.preset_overrides`), with the byte tokenizer's
    special tokens."""
    from alignjax.core.configlib import apply_override
    from alignjax.data.byte_tokenizer import make_byte_tokenizer
    from alignjax.models.presets import preset_config

    if preset is None and overrides:
        raise ValueError("--preset-override changes a --preset: name one")
    tree: dict = {}
    for kv in overrides:
        apply_override(tree, kv)
    cfg = dict(MODEL) if preset is None else preset_config(preset, **tree)
    cfg.pop("dtype", None)  # the checkpoint is float32; each trainer picks its compute dtype
    tokenizer = make_byte_tokenizer()
    if cfg["vocab_size"] < len(tokenizer):
        raise ValueError(
            f"--preset {preset}: vocab_size {cfg['vocab_size']} is below the byte tokenizer's "
            f"{len(tokenizer)} tokens; raise it with --preset-override vocab_size=N"
        )
    cfg.update(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return cfg


def _build_model(out_dir: str, cfg: dict) -> int:
    import torch
    import transformers

    from alignjax.data.byte_tokenizer import make_byte_tokenizer

    config = transformers.AutoConfig.for_model(**cfg)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out_dir)
    make_byte_tokenizer().save_pretrained(out_dir)
    return sum(p.numel() for p in model.parameters())


def alignjax_params(model_dir: str) -> int:
    """The parameters alignjax builds from the checkpoint's config.json (shapes only)."""
    import math

    import jax

    from alignjax.models import decoder
    from alignjax.models.families import load_hf_config_dict, model_config_from_hf

    cfg = model_config_from_hf(load_hf_config_dict(model_dir))
    shapes = jax.eval_shape(lambda: decoder.init_params(cfg, jax.random.key(0)))
    return sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))


def pair_lengths(n: int, max_length: int, lengths: str, seed: int = 0) -> list[tuple[int, int, int]]:
    """(prompt, chosen response, rejected response) characters of `n` pairs; with the byte
    tokenizer (a token a byte) each sequence is BOS + prompt + response + EOS.

    full: every sequence max_length - 2 tokens (2 spare), so alignjax's length bucket and
    TRL's pad-to-longest hold the same tokens. ragged: each sequence's length drawn
    uniformly from 25% to 100% of max_length, independently for chosen and rejected, the
    prompt an eighth of the shorter.
    """
    if lengths == "full":
        prompt = max_length // 8
        return [(prompt, max_length - prompt - 4, max_length - prompt - 4)] * n
    rng = random.Random(seed)
    low = -(-max_length // 4)
    out = []
    for _ in range(n):
        chosen, rejected = rng.randint(low, max_length - 2), rng.randint(low, max_length - 2)
        prompt = min(chosen, rejected) // 8
        out.append((prompt, chosen - 2 - prompt, rejected - 2 - prompt))
    return out


def trl_padding_fraction(sizes: list[tuple[int, int, int]], batch_size: int) -> float:
    """The share of padding in TRL's batches of these pairs, taken in order: its collator
    pads each batch's chosen and rejected sequences to the batch's longest."""
    real = slots = 0
    for i in range(0, len(sizes), batch_size):
        tokens = [2 + prompt + r for prompt, c, rj in sizes[i : i + batch_size] for r in (c, rj)]
        real, slots = real + sum(tokens), slots + len(tokens) * max(tokens)
    return 1 - real / slots


def write_pairs(path: str, sizes: list[tuple[int, int, int]]) -> None:
    """Plain-text pairs of the given (prompt, chosen, rejected) characters."""
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "omega", "kappa", "sigma", "theta"]

    def text(chars):
        out = ""
        while len(out) < chars:
            out += rng.choice(words) + " "
        return out[:chars]

    with open(path, "w") as f:
        for prompt, chosen, rejected in sizes:
            row = {
                "prompt": text(prompt),
                "chosen": " " + text(chosen - 1),
                "rejected": " " + text(rejected - 1),
            }
            f.write(json.dumps(row) + "\n")


def _trl_timing(
    model_dir, data_path, batch_size, max_length, warmup, steps, out_dir, dtype
) -> tuple[float, float, str]:
    """(seconds per timed step, non-padding tokens per second, device) of TRL's DPOTrainer."""
    import datasets
    import torch
    import transformers
    import trl

    cuda = torch.cuda.is_available()
    # CUDA kernels run asynchronously: a step ends when the GPU has finished it.
    sync = torch.cuda.synchronize if cuda else lambda: None
    times, seen = [], []

    class Timer(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            sync()
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            times.append(time.perf_counter() - self.start)
            seen.append(state.num_input_tokens_seen)

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
        # Each batch is padded to its longest sequence; `padding_free=True` warns and falls
        # back to this in TRL 1.x's DPOTrainer.
        padding_free=False,
        # DPOConfig's default recomputes the forward in the backward; alignjax keeps the
        # activations (model.remat_policy: none), so TRL does too.
        gradient_checkpointing=False,
        train_sampling_strategy="sequential",
        include_num_input_tokens_seen="non_padding",  # the attention mask's sum
        logging_steps=warmup + steps,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=not cuda,
        bf16=dtype == "bfloat16",
        seed=0,
    )
    with open(data_path) as f:
        rows = [json.loads(line) for line in f]
    # PyTorch's attention with a padding mask; the policy's parameters float32 (the optimizer's).
    load = lambda dt: transformers.AutoModelForCausalLM.from_pretrained(  # noqa: E731
        model_dir, dtype=dt, attn_implementation="sdpa"
    )
    trainer = trl.DPOTrainer(
        model=load(torch.float32),
        ref_model=load(getattr(torch, dtype)),
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=transformers.AutoTokenizer.from_pretrained(model_dir),
        callbacks=[Timer()],
    )
    trainer.train()
    del trainer
    gc.collect()
    if cuda:  # the models and optimizer state are gone: hand their cached memory back
        torch.cuda.empty_cache()
    timed_s = sum(times[warmup:])
    return timed_s / len(times[warmup:]), (seen[-1] - seen[warmup - 1]) / timed_s, "cuda" if cuda else "cpu"


def _alignjax_timing(
    model_dir, data_path, batch_size, max_length, warmup, steps, run_dir, packing, model
) -> tuple[float, float, float]:
    """(seconds per timed step, non-padding tokens per second, padding fraction) of alignjax."""
    import yaml

    from alignjax.train.config import load_config
    from alignjax.train.loop import run

    # Two logging windows: the first (`warmup` steps) includes compilation, the second is timed.
    assert warmup == steps, "alignjax times whole logging windows: warmup and steps must be equal"
    data = {
        "train": data_path,
        "shuffle": False,
        "max_length": max_length,
        "max_prompt_length": max_length // 2,
    }
    # Packed rows of 2 * max_length: a step holds as many token slots as a full-length batch.
    data.update({"packing": True} if packing else {"buckets": [max_length]})
    config = {
        "run_dir": run_dir,
        "model": {"hf_path": model_dir, **model},
        "data": data,
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
        last = [json.loads(line) for line in f][-1]
    return last["step_time_s"], last["tokens_per_sec"], last["data/padding_fraction"]


def bench_vs_trl(
    batch_size: int = 4,
    max_length: int = 512,
    steps: int = 5,
    lengths: str = "full",
    preset: str | None = None,
    preset_overrides: list[str] = (),
    dtype: str = "float32",
    attention_backend: str = "xla",
) -> dict:
    """full: both trainers on batches of `batch_size` full-length pairs. ragged: alignjax packs
    `batch_size` rows of 2 * max_length tokens per step, TRL takes `batch_size` pairs padded
    to the longest; compare their tokens/s. `attention_backend` is alignjax's; TRL's is
    PyTorch's sdpa."""
    ragged = lengths == "ragged"
    cfg = hf_config(preset, list(preset_overrides))
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = os.path.join(tmp, "model")
        n_params = _build_model(model_dir, cfg)
        data_path = os.path.join(tmp, "pairs.jsonl")
        # A packed row holds about 1.6 ragged pairs: enough pairs for both windows.
        sizes = pair_lengths((8 if ragged else 4) * batch_size * steps, max_length, lengths)
        write_pairs(data_path, sizes)
        theirs_s, theirs_tps, trl_device = _trl_timing(
            model_dir, data_path, batch_size, max_length, steps, steps, os.path.join(tmp, "trl"), dtype
        )
        model = {"dtype": dtype, "attention_backend": attention_backend}
        ours_s, ours_tps, ours_padding = _alignjax_timing(
            model_dir,
            data_path,
            batch_size,
            max_length,
            steps,
            steps,
            os.path.join(tmp, "run"),
            ragged,
            model,
        )
        ours_params = alignjax_params(model_dir)
    out = {
        "model": preset or "bench_trl.MODEL",
        "preset_overrides": list(preset_overrides),
        "model_params": n_params,
        "alignjax_model_params": ours_params,
        "dtype": dtype,
        "attention_backend": attention_backend,
        "trl_device": trl_device,
        "batch_pairs": batch_size,
        "max_length": max_length,
        "timed_steps": steps,
        "lengths": lengths,
        "alignjax_step_s": ours_s,
        "trl_step_s": theirs_s,
        "alignjax_tokens_per_s": ours_tps,
        "trl_tokens_per_s": theirs_tps,
        "alignjax_over_trl_tokens_per_s": ours_tps / theirs_tps,
        # Over all the steps each side ran, warm-up included.
        "alignjax_padding_fraction": ours_padding,
        "trl_padding_fraction": trl_padding_fraction(sizes[: 2 * steps * batch_size], batch_size),
    }
    if not ragged:  # a ragged step holds different pairs on each side: compare tokens/s
        out["trl_over_alignjax"] = theirs_s / ours_s
    return out
