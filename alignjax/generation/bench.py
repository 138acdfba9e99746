"""`run_generate_benchmark`: sampler throughput, prefill and decode timed apart.

A randomly initialised preset model generates from random full-length prompts with no
EOS, so every row decodes all `new_tokens` and the work per call is fixed. Prefill and
the decode loop are jitted separately (exactly the two halves of `sampler.sample`), each
timed as the median of `repeats` runs after a compiling warm-up. Meant for
`alignjax bench generate`; timing lives here, never in tests.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import jax
import numpy as np

from alignjax.generation import sampler
from alignjax.generation.logit_filters import SamplingConfig
from alignjax.models import decoder
from alignjax.models.families import model_config_from_hf
from alignjax.models.presets import preset_config


def _timed(fn, *args):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


def run_generate_benchmark(
    *,
    preset: str = "tiny",
    batch_size: int = 8,
    prompt_len: int = 64,
    new_tokens: int = 64,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    scan_layers: bool = False,
    dtype: str = "float32",
    repeats: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """Tokens/s of prefill (prompt tokens) and decode (generated tokens) for one shape."""
    if new_tokens < 2:
        raise ValueError(f"new_tokens={new_tokens}: need at least 2 for a decode step to time")
    cfg = model_config_from_hf(preset_config(preset), dtype=dtype, param_dtype=dtype, scan_layers=scan_layers)
    params = jax.device_put(decoder.init_params(cfg, jax.random.key(seed)))
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    settings = SamplingConfig(
        max_new_tokens=new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        pad_id=cfg.pad_token_id or 0,
    )
    rng = np.random.default_rng(seed)
    prompts = rng.integers(0, cfg.vocab_size, size=(batch_size, prompt_len)).tolist()
    tokens_BxLp, lengths_B = sampler.left_pad(prompts, settings.pad_id, min_bucket=1)
    keys_P = jax.random.key(seed)[None]

    prefill = jax.jit(lambda p, t, n, k: sampler.prefill(p, cfg, settings, t, n, k))
    decode = jax.jit(lambda p, s, k: sampler.decode(p, cfg, settings, s, k))
    state, prefill_compile_s = _timed(prefill, params, tokens_BxLp, lengths_B, keys_P)
    out, decode_compile_s = _timed(decode, params, state, keys_P)
    assert int(np.min(out.lengths_B)) == new_tokens  # no EOS: every row decoded everything

    prefill_s = statistics.median(
        _timed(prefill, params, tokens_BxLp, lengths_B, keys_P)[1] for _ in range(repeats)
    )
    decode_s = statistics.median(_timed(decode, params, state, keys_P)[1] for _ in range(repeats))
    decode_steps = new_tokens - 1  # the first new token comes out of prefill
    prompt_tokens = batch_size * tokens_BxLp.shape[1]
    return {
        "device": str(jax.devices()[0].device_kind),
        "preset": preset,
        "params": n_params,
        "dtype": dtype,
        "scan_layers": scan_layers,
        "batch_size": batch_size,
        "prompt_len": int(tokens_BxLp.shape[1]),
        "new_tokens": new_tokens,
        "sampling": {"temperature": temperature, "top_k": top_k, "top_p": top_p},
        "prefill_compile_s": prefill_compile_s,
        "decode_compile_s": decode_compile_s,
        "prefill_s": prefill_s,
        "decode_s": decode_s,
        "prefill_tokens_per_s": prompt_tokens / prefill_s,
        "decode_tokens_per_s": batch_size * decode_steps / decode_s,
        "decode_step_ms": 1e3 * decode_s / decode_steps,
        "generated_tokens_per_s": batch_size * new_tokens / (prefill_s + decode_s),
    }
