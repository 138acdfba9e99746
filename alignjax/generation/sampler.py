"""Batched generation with a KV cache: one prefill, then a `lax.while_loop` of decode steps,
run as one global program over a mesh.

Prompts are left-padded so every row's last prompt token sits in the same column: one
prefill call fills the cache, and each decode step writes one shared slot. Rows keep
their own positions (counted from their first real token), so a row's tokens are exactly
what it would get alone.

On a mesh the rows are split over the batch axes and the cache over rows and key/value
heads (`cache_sharding.py`); the parameters stay as the caller holds them. Each process's
prompts are its block of the global batch (`process_rows.py`), and block j draws with its
own key: a process's rows draw what they would draw alone, whatever the process count.
The decode loop ends when every row of every block is done, decided inside the program.

Compiled shapes stay few: `left_pad` rounds the prompt length up to a power of two and
`max_new_tokens` is fixed per `SamplingConfig`, so a training run compiles once per
prompt bucket.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from alignjax.core import sharding
from alignjax.generation import cache_sharding, process_rows
from alignjax.generation.logit_filters import SamplingConfig, choose_tokens
from alignjax.models import decode_attention, decoder, head
from alignjax.models.config import ModelConfig


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
    cache: decoder.KVCache | decoder.PagedKVCache


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


def _choose(logits_BxV, sampling: SamplingConfig, keys_P):
    """Block p of B / P consecutive rows draws with keys_P[p], exactly as those rows alone would."""
    p = keys_P.shape[0]
    b, v = logits_BxV.shape
    tokens_PxR = jax.vmap(lambda logits_RxV, key: choose_tokens(logits_RxV, sampling, key))(
        logits_BxV.reshape(p, b // p, v), keys_P
    )
    return tokens_PxR.reshape(b)


def _fold_in(keys_P, data):
    return jax.vmap(lambda key: jax.random.fold_in(key, data))(keys_P)


def _advance(state: DecodeState, logits_BxV, sampling: SamplingConfig, keys_P) -> DecodeState:
    """Pick each row's next token and record it, unless the row already stopped."""
    token_B = _choose(logits_BxV, sampling, keys_P)
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


def _fresh_state(cfg: ModelConfig, sampling: SamplingConfig, prompt_lengths_B, lp: int) -> DecodeState:
    """Nothing generated yet, an empty cache. Rows with an empty prompt only fill a process's
    block up to the agreed shape: they are done before they start."""
    b = prompt_lengths_B.shape[0]
    # The last generated token is never fed back, so max_new_tokens - 1 decode slots suffice.
    cache = decoder.init_cache(cfg, b, lp + sampling.max_new_tokens - 1)
    return DecodeState(
        step=jnp.zeros((), jnp.int32),
        last_token_B=jnp.zeros((b,), jnp.int32),
        next_position_B=prompt_lengths_B.astype(jnp.int32),
        tokens_BxT=jnp.full((b, sampling.max_new_tokens), sampling.pad_id, jnp.int32),
        lengths_B=jnp.zeros((b,), jnp.int32),
        done_B=prompt_lengths_B == 0,
        hit_eos_B=jnp.zeros((b,), bool),
        cache=cache_sharding.constrain_cache(cache),
    )


def prefill(
    params, cfg: ModelConfig, sampling: SamplingConfig, prompt_tokens_BxLp, prompt_lengths_B, keys_P
) -> DecodeState:
    """Run the prompts into a fresh cache and choose the first new token of each row."""
    lp = prompt_tokens_BxLp.shape[1]
    pad_B = lp - prompt_lengths_B
    column_Lp = jnp.arange(lp, dtype=jnp.int32)
    positions_BxLp = jnp.maximum(column_Lp[None] - pad_B[:, None], 0)
    segment_ids_BxLp = (column_Lp[None] >= pad_B[:, None]).astype(jnp.int32)
    state = _fresh_state(cfg, sampling, prompt_lengths_B, lp)
    hidden_BxLpxD, cache = decoder.apply_with_cache(
        params, cfg, prompt_tokens_BxLp, positions_BxLp, segment_ids_BxLp, state.cache
    )
    logits_BxV = head.logits_BxLxV(params, cfg, hidden_BxLpxD[:, -1:])[:, 0]
    state = state._replace(cache=cache_sharding.constrain_cache(cache))
    return _advance(state, logits_BxV, sampling, _fold_in(keys_P, 0))


def decode_state(
    params, cfg: ModelConfig, sampling: SamplingConfig, state: DecodeState, keys_P
) -> DecodeState:
    """Decode until every row has stopped or max_new_tokens are out; the final state.

    Step t draws with `fold_in(key, t)` of each block's key, so a run is reproducible from
    its keys and a row's draws do not depend on when other rows stop.
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
        state = state._replace(
            cache=cache_sharding.constrain_cache(cache), next_position_B=state.next_position_B + 1
        )
        return _advance(state, logits_BxV, sampling, _fold_in(keys_P, state.step))

    def running(state: DecodeState):
        return (state.step < sampling.max_new_tokens) & ~jnp.all(state.done_B)

    return jax.lax.while_loop(running, step, state)


def decode(params, cfg: ModelConfig, sampling: SamplingConfig, state: DecodeState, keys_P) -> Generation:
    """`decode_state`'s generated tokens."""
    state = decode_state(params, cfg, sampling, state, keys_P)
    return Generation(state.tokens_BxT, state.lengths_B, state.hit_eos_B)


def state_logical_axes(cache_layout: type = decoder.KVCache) -> DecodeState:
    one, two = cache_sharding.rows_axes(1), cache_sharding.rows_axes(2)
    return DecodeState(P(), one, one, two, one, one, one, cache_sharding.cache_logical_axes(cache_layout))


class ParamsLayout(NamedTuple):
    """The parameter tree's structure and each leaf's sharding: hashable, a program's key."""

    treedef: Any
    shardings: tuple


def params_layout(params, mesh: Mesh) -> ParamsLayout:
    """The parameters as the caller holds them; arrays placed without a mesh count as replicated."""
    leaves, treedef = jax.tree.flatten(params)
    replicated = NamedSharding(mesh, P())
    held = (getattr(leaf, "sharding", None) for leaf in leaves)
    return ParamsLayout(treedef, tuple(s if isinstance(s, NamedSharding) else replicated for s in held))


@dataclasses.dataclass(frozen=True)
class SamplingProgram:
    """The two jitted halves for one (model, settings, mesh, parameter layout, shape)."""

    prefill: Any  # (params, prompt_tokens_BxLp, prompt_lengths_B, key_data_P) -> DecodeState
    # (params, DecodeState, key_data_P) -> the final DecodeState: the state is donated and
    # returned, so the loop updates the one cache in place instead of a copy of it.
    decode: Any
    prompt_tokens: NamedSharding
    prompt_lengths: NamedSharding
    keys: NamedSharding
    state_shapes: DecodeState
    state: DecodeState  # its shardings


@functools.lru_cache(maxsize=32)
def sampling_program(
    cfg: ModelConfig,
    sampling: SamplingConfig,
    mesh: Mesh,
    layout: ParamsLayout,
    rows: int,
    prompt_len: int,
    key_impl: str,
) -> SamplingProgram:
    """Prefill and decode for `rows` global rows of `prompt_len` prompt tokens, jitted with
    explicit shardings (the batch axes' rows must divide `rows`, see `process_rows`). The
    decode attention, and so the cache's layout, is settled for the mesh's platform."""
    cfg = decode_attention.for_target(cfg, mesh.devices.flat[0].platform)
    state_shapes = jax.eval_shape(
        lambda n: _fresh_state(cfg, sampling, n, prompt_len), jax.ShapeDtypeStruct((rows,), jnp.int32)
    )
    state = sharding.tree_shardings(state_logical_axes(type(state_shapes.cache)), state_shapes, mesh)
    params = jax.tree.unflatten(layout.treedef, layout.shardings)
    tokens = NamedSharding(
        mesh, sharding.logical_to_spec(cache_sharding.rows_axes(2), (rows, prompt_len), mesh)
    )
    keys = NamedSharding(mesh, P())

    def prefill_fn(params, prompt_tokens_BxLp, prompt_lengths_B, key_data_P):
        keys_P = jax.random.wrap_key_data(key_data_P, impl=key_impl)
        return prefill(params, cfg, sampling, prompt_tokens_BxLp, prompt_lengths_B, keys_P)

    def decode_fn(params, state, key_data_P):
        keys_P = jax.random.wrap_key_data(key_data_P, impl=key_impl)
        return decode_state(params, cfg, sampling, state, keys_P)

    return SamplingProgram(
        prefill=jax.jit(
            prefill_fn, in_shardings=(params, tokens, state.lengths_B, keys), out_shardings=state
        ),
        decode=jax.jit(decode_fn, in_shardings=(params, state, keys), out_shardings=state, donate_argnums=1),
        prompt_tokens=tokens,
        prompt_lengths=state.lengths_B,
        keys=keys,
        state_shapes=state_shapes,
        state=state,
    )


def sample_rows(
    params,
    cfg: ModelConfig,
    sampling: SamplingConfig,
    mesh: Mesh,
    prompts: Sequence[Sequence[int]],
    process_keys,
    min_bucket: int = 16,
) -> list[list[int]]:
    """This process's prompts in, its generated token lists out (a final EOS included).

    Every process of the run calls it at once (the program is collective), each with its
    own prompts (none: it only takes part) and every process's key: `process_keys[q]` draws
    process q's rows.
    """
    count = jax.process_count()
    if process_keys.shape != (count,):
        raise ValueError(
            f"sampling needs one key per process ({count}), got keys of shape {process_keys.shape}"
        )
    if prompts:
        tokens_NxL, lengths_N = left_pad(prompts, sampling.pad_id, min_bucket)
    else:  # this process joins the others' program with padding rows only
        tokens_NxL, lengths_N = np.zeros((0, 1), np.int32), np.zeros(0, np.int32)
    n, length = tokens_NxL.shape
    rows, lp = process_rows.agree_block(n, length, mesh)
    if rows == 0:
        return []
    tokens_RxLp = np.pad(tokens_NxL, ((0, rows - n), (lp - length, 0)), constant_values=sampling.pad_id)
    lengths_R = np.pad(lengths_N, (0, rows - n))
    layout = params_layout(params, mesh)
    program = sampling_program(
        cfg, sampling, mesh, layout, rows * count, lp, jax.random.key_impl(process_keys)
    )
    owners = process_rows.block_owners(program.prompt_lengths, rows * count)
    key_data_P = np.asarray(jax.random.key_data(process_keys))[owners]
    key_data_P = jax.make_array_from_process_local_data(program.keys, key_data_P, key_data_P.shape)
    with jax.set_mesh(mesh):
        state = program.prefill(
            params,
            process_rows.to_global(tokens_RxLp, program.prompt_tokens),
            process_rows.to_global(lengths_R, program.prompt_lengths),
            key_data_P,
        )
        out = program.decode(params, state, key_data_P)
    tokens_RxT, lengths_R = process_rows.own_rows(out.tokens_BxT), process_rows.own_rows(out.lengths_B)
    return [tokens_RxT[b, : lengths_R[b]].tolist() for b in range(n)]


def params_mesh(params) -> Mesh:
    """The mesh the parameters lie on; one device's mesh for arrays placed without one."""
    leaves = jax.tree.leaves(params)
    for leaf in leaves:
        if isinstance(getattr(leaf, "sharding", None), NamedSharding):
            return leaf.sharding.mesh
    device = next(iter(leaves[0].devices())) if hasattr(leaves[0], "devices") else jax.devices()[0]
    return Mesh(np.asarray([device]).reshape((1,) * len(sharding.MESH_AXES)), sharding.MESH_AXES)


def generate(
    params,
    cfg: ModelConfig,
    sampling: SamplingConfig,
    prompts: Sequence[Sequence[int]],
    rng,
    min_bucket: int = 16,
) -> list[list[int]]:
    """One process's generation with one key for every row (the generate command, evaluation):
    token lists in, generated token lists out (EOS included), on the parameters' own mesh."""
    return sample_rows(params, cfg, sampling, params_mesh(params), prompts, rng[None], min_bucket)
