"""`run_mixed_generate_benchmark`: the sampler against transformers' `generate` when rows stop
at different lengths (half after `short` tokens, half run to `long`).

One random model (a preset's config.json, initialised by transformers) is loaded by both.
Greedy decoding makes every row's tokens a function of its prompt, so the stop ids can be
chosen after a probe: each short row's `short`-th token becomes a stop id, and the long
rows are prompts whose `long` greedy tokens never meet one. Both sides then decode the
same batch with those stop ids; each is timed end to end (host call in, token lists out)
as the median of `repeats` runs after a compiling warm-up. Meant for
`alignjax bench generate --mixed` (needs transformers and PyTorch: the test extra).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from typing import Any

import jax
import numpy as np

from alignjax.generation import sampler
from alignjax.generation.logit_filters import SamplingConfig
from alignjax.models.presets import preset_config


def _hf_model(preset: str, vocab_size: int, seed: int, out_dir: str):
    """The preset with `vocab_size` tokens, weights drawn large enough (std 0.15) that greedy
    rows wander over the vocabulary instead of repeating one token."""
    import torch
    import transformers

    values = {k: v for k, v in preset_config(preset, vocab_size=vocab_size).items() if k != "dtype"}
    config = transformers.AutoConfig.for_model(values.pop("model_type"), **values)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0.0, 0.15)
    model.save_pretrained(out_dir)
    return model


def _choose_rows(probe: list[list[int]], n: int, short: int) -> tuple[list[int], list[int], set[int]]:
    """(short rows, long rows, stop ids): short row b's `short`-th token stops it, and it is the
    first stop id either kind of row meets."""
    stops: set[int] = set()
    short_rows: list[int] = []
    for b, tokens in enumerate(probe):
        candidate = stops | {tokens[short - 1]}
        early = lambda row: set(probe[row][: short - 1]) & candidate  # noqa: E731
        if len(short_rows) < n and not early(b) and not any(early(r) for r in short_rows):
            short_rows.append(b)
            stops = candidate
    long_rows = [b for b, t in enumerate(probe) if b not in short_rows and not set(t) & stops][:n]
    if len(short_rows) < n or len(long_rows) < n:
        raise ValueError(
            f"only {len(short_rows)} short and {len(long_rows)} long rows of {len(probe)} probed prompts; "
            "try another --seed or a smaller --batch-size"
        )
    return short_rows, long_rows, stops


def _timed(fn, repeats: int) -> tuple[Any, float]:
    out = fn()  # compiles (JAX) / warms up (PyTorch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def _hf_generate(model, prompts: list[list[int]], new_tokens: int, stops: list[int], pad_id: int):
    import torch

    ids = torch.tensor(prompts)
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            do_sample=False,
            eos_token_id=stops,
            pad_token_id=pad_id,
        )
    rows = []
    for row in out[:, ids.shape[1] :].tolist():
        end = next((i + 1 for i, t in enumerate(row) if t in stops), len(row))
        rows.append(row[:end])
    return rows


def run_mixed_generate_benchmark(
    *, preset: str = "tiny", vocab_size: int = 32000, batch_size: int = 16, prompt_len: int = 64,
    short: int = 8, long: int = 256, repeats: int = 3, seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """Generated tokens/s of the sampler and of transformers on one mixed-length batch."""
    import torch

    from alignjax.convert.api import load_hf_model

    with tempfile.TemporaryDirectory() as hf_dir:
        hf_model = _hf_model(preset, vocab_size, seed, hf_dir)
        cfg, params, _ = load_hf_model(hf_dir)
    params = jax.device_put(params)
    pad_id = cfg.pad_token_id or 0
    rng = np.random.default_rng(seed)
    pool = rng.integers(3, cfg.vocab_size, size=(2 * batch_size, prompt_len)).tolist()
    probe_settings = SamplingConfig(max_new_tokens=long, temperature=0.0, pad_id=pad_id)
    probe = sampler.generate(params, cfg, probe_settings, pool, jax.random.key(seed))
    short_rows, long_rows, stops = _choose_rows(probe, batch_size // 2, short)
    prompts = [pool[b] for b in short_rows + long_rows]
    settings = SamplingConfig(
        max_new_tokens=long, temperature=0.0, eos_ids=tuple(sorted(stops)), pad_id=pad_id
    )
    key = jax.random.key(seed)
    ours, ours_s = _timed(lambda: sampler.generate(params, cfg, settings, prompts, key), repeats)
    theirs, theirs_s = _timed(lambda: _hf_generate(hf_model, prompts, long, sorted(stops), pad_id), repeats)
    ours_tokens, theirs_tokens = sum(map(len, ours)), sum(map(len, theirs))
    return {
        "device": str(jax.devices()[0].device_kind),
        "torch_threads": torch.get_num_threads(),
        "preset": preset,
        "vocab_size": vocab_size,
        "batch_size": len(prompts),
        "prompt_len": prompt_len,
        "lengths": {"short": short, "long": long},
        "alignjax_lengths": sorted(set(map(len, ours))),
        "transformers_lengths": sorted(set(map(len, theirs))),
        "same_tokens": ours == theirs,
        "alignjax_s": ours_s,
        "transformers_s": theirs_s,
        "alignjax_tokens_per_s": ours_tokens / ours_s,
        "transformers_tokens_per_s": theirs_tokens / theirs_s,
        "ratio_alignjax_over_transformers": (ours_tokens / ours_s) / (theirs_tokens / theirs_s),
    }
