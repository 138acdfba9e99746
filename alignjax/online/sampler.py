"""Batched generation with a KV cache: one prefill, then a `lax.while_loop` of decode steps.

Prompts are left-padded so every row's last prompt token sits in the same column: one
prefill call fills the cache, and each decode step writes one shared slot. Rows keep
their own positions (counted from their first real token), so a row's tokens are exactly
what it would get alone.

Compiled shapes stay few: `left_pad` rounds the prompt length up to a power of two and
`max_new_tokens` is fixed per `SamplingConfig`, so a training run compiles once per
prompt bucket. `sample` is a pure function of (params, prompt arrays, rng); the trainer
jits it with its own in/out shardings, `make_sampler` is the single-device shortcut.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from alignjax.models import decoder, head
from alignjax.models.config import ModelConfig
from alignjax.online.logit_filters import SamplingConfig, choose_tokens


class Generation(NamedTuple):
    tokens_BxT: jax.Array  # int32; `pad_id` after a row stops
    lengths_B: jax.Array  # generated tokens per row, a final EOS included
    hit_eos_B: jax.Array  # bool: the row stopped on EOS rather than max_new_tokens


class DecodeState(NamedTuple):
    """Everything a decode step reads and writes; the `lax.while_loop` carry."""

    step: jax.Array  # tokens generated so far (the next column of tokens_BxT)
    last_token_B: jax.Array
    next_position_B: jax.Array
    tokens_BxT: jax.Array
    lengths_B: jax.Array
    done_B: jax.Array
    hit_eos_B: jax.Array
    cache: decoder.KVCache


def bucket_length(n: int, min_bucket: int = 16) -> int:
    """The smallest power of two >= n (and >= min_bucket): the padded prompt length."""
    bucket = max(1, min_bucket)
    while bucket < n:
        bucket *= 2
    return bucket


def left_pad(
    prompts: Sequence[Sequence[int]], pad_id: int, min_bucket: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """(tokens [B, Lp] int32 left-padded to a power-of-two bucket, prompt lengths [B])."""
    lengths = [len(p) for p in prompts]
    if not prompts or min(lengths) == 0:
        empty = [i for i, n in enumerate(lengths) if n == 0]
        raise ValueError(
            f"every prompt needs at least one token (empty rows: {empty or 'no rows at all'}); "
            "generation continues from the prompt's last token"
        )
    lp = bucket_length(max(lengths), min_bucket)
    tokens_BxLp = np.full((len(prompts), lp), pad_id, np.int32)
    for b, p in enumerate(prompts):
        tokens_BxLp[b, lp - len(p) :] = p
    return tokens_BxLp, np.asarray(lengths, np.int32)


def _advance(state: DecodeState, logits_BxV, sampling: SamplingConfig, key) -> DecodeState:
    """Pick each row's next token and record it, unless the row already stopped."""
    token_B = choose_tokens(logits_BxV, sampling, key)
    live_B = ~state.done_B
    token_B = jnp.where(live_B, token_B, sampling.pad_id)
    hit_B = live_B & jnp.isin(token_B, jnp.asarray(sampling.eos_ids, jnp.int32))
    return state._replace(
        step=state.step + 1,
        last_token_B=token_B,
        tokens_BxT=jax.lax.dynamic_update_slice(state.tokens_BxT, token_B[:, None], (0, state.step)),
        lengths_B=state.lengths_B + live_B.astype(jnp.int32),
        done_B=state.done_B | hit_B,
        hit_eos_B=state.hit_eos_B | hit_B,
    )


def prefill(
    params, cfg: ModelConfig, sampling: SamplingConfig, prompt_tokens_BxLp, prompt_lengths_B, rng
) -> DecodeState:
    """Run the prompts into a fresh cache and choose the first new token of each row."""
    b, lp = prompt_tokens_BxLp.shape
    pad_B = lp - prompt_lengths_B
    column_Lp = jnp.arange(lp, dtype=jnp.int32)
    positions_BxLp = jnp.maximum(column_Lp[None] - pad_B[:, None], 0)
    segment_ids_BxLp = (column_Lp[None] >= pad_B[:, None]).astype(jnp.int32)
    # The last generated token is never fed back, so max_new_tokens - 1 decode slots suffice.
    cache = decoder.init_cache(cfg, b, lp + sampling.max_new_tokens - 1)
    hidden_BxLpxD, cache = decoder.apply_with_cache(
        params, cfg, prompt_tokens_BxLp, positions_BxLp, segment_ids_BxLp, cache
    )
    logits_BxV = head.logits_BxLxV(params, cfg, hidden_BxLpxD[:, -1:])[:, 0]
    state = DecodeState(
        step=jnp.zeros((), jnp.int32),
        last_token_B=jnp.zeros((b,), jnp.int32),
        next_position_B=prompt_lengths_B.astype(jnp.int32),
        tokens_BxT=jnp.full((b, sampling.max_new_tokens), sampling.pad_id, jnp.int32),
        lengths_B=jnp.zeros((b,), jnp.int32),
        done_B=jnp.zeros((b,), bool),
        hit_eos_B=jnp.zeros((b,), bool),
        cache=cache,
    )
    return _advance(state, logits_BxV, sampling, jax.random.fold_in(rng, 0))


def decode(params, cfg: ModelConfig, sampling: SamplingConfig, state: DecodeState, rng) -> Generation:
    """Decode until every row has stopped or max_new_tokens are out.

    Step t draws with `fold_in(rng, t)`, so a run is reproducible from its rng and a
    row's draws do not depend on when other rows stop.
    """
    b = state.last_token_B.shape[0]
    ones_Bx1 = jnp.ones((b, 1), jnp.int32)

    def step(state: DecodeState) -> DecodeState:
        hidden_Bx1xD, cache = decoder.apply_with_cache(
            params,
            cfg,
            state.last_token_B[:, None],
            state.next_position_B[:, None],
            ones_Bx1,
            state.cache,
        )
        logits_BxV = head.logits_BxLxV(params, cfg, hidden_Bx1xD)[:, 0]
        state = state._replace(cache=cache, next_position_B=state.next_position_B + 1)
        return _advance(state, logits_BxV, sampling, jax.random.fold_in(rng, state.step))

    def running(state: DecodeState):
        return (state.step < sampling.max_new_tokens) & ~jnp.all(state.done_B)

    state = jax.lax.while_loop(running, step, state)
    return Generation(state.tokens_BxT, state.lengths_B, state.hit_eos_B)


def sample(
    params, cfg: ModelConfig, sampling: SamplingConfig, prompt_tokens_BxLp, prompt_lengths_B, rng
) -> Generation:
    """Generate up to `max_new_tokens` per row after left-padded prompts (see `left_pad`)."""
    state = prefill(params, cfg, sampling, prompt_tokens_BxLp, prompt_lengths_B, rng)
    return decode(params, cfg, sampling, state, rng)


@functools.lru_cache(maxsize=32)
def make_sampler(cfg: ModelConfig, sampling: SamplingConfig):
    """`sample` jitted for one (model, settings): fn(params, tokens_BxLp, lengths_B, rng)."""

    def fn(params, prompt_tokens_BxLp, prompt_lengths_B, rng):
        return sample(params, cfg, sampling, prompt_tokens_BxLp, prompt_lengths_B, rng)

    return jax.jit(fn)


def generate(
    params,
    cfg: ModelConfig,
    sampling: SamplingConfig,
    prompts: Sequence[Sequence[int]],
    rng,
    min_bucket: int = 16,
) -> list[list[int]]:
    """Token lists in, generated token lists out (EOS included): the Python-side edge."""
    tokens_BxLp, lengths_B = left_pad(prompts, sampling.pad_id, min_bucket)
    out = make_sampler(cfg, sampling)(params, tokens_BxLp, lengths_B, rng)
    tokens_BxT, lengths = np.asarray(out.tokens_BxT), np.asarray(out.lengths_B)
    return [tokens_BxT[b, : lengths[b]].tolist() for b in range(len(prompts))]
