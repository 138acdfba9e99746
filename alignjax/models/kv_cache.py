"""Generation with a KV cache: the keys and values of earlier tokens, and the forward
pass that runs new tokens against them (prefill, then one token per decode step), with
the decoder's parameters and the same masking rule as `decoder.apply`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from alignjax.models import decode_attention, lora, paged_cache
from alignjax.models.block import Block, LayerCache
from alignjax.models.config import ModelConfig
from alignjax.models.layers import RMSNorm
from alignjax.models.paged_cache import PagedKVCache, PagedLayerCache
from alignjax.models.stack import Params, embed, layer_rope_tables, scan_schedule


class KVCache(NamedTuple):
    """Keys and values of every layer, for generation. A pytree, so decode steps are pure.

    Slots [0, length) are written, in the order tokens arrived. Each slot keeps its token's
    position and segment id, so attention over the cache applies the one masking rule of
    `attention.py`: unwritten and padding slots have segment 0 and are never attended, and
    sliding layers see only slots fewer than `window` positions behind the query. Keys are
    stored after the rotary embedding. Layers are stacked on the leading axis whether or
    not they are scanned, so a cache does not depend on the parameter layout.
    """

    k_NxBxSxKxDh: jax.Array
    v_NxBxSxKxDh: jax.Array
    positions_BxS: jax.Array
    segment_ids_BxS: jax.Array
    length: jax.Array  # int32 scalar: the next slot to write, shared by every row


def init_cache(cfg: ModelConfig, batch_size: int, max_len: int) -> KVCache | PagedKVCache:
    """An empty cache of `max_len` slots per row, in the compute dtype, laid out for the
    decode attention `cfg` runs (`decode_attention.backend`): pages for the paged kernel,
    slot order for the einsum."""
    if decode_attention.backend(cfg) in decode_attention.PAGED:
        return paged_cache.init_paged_cache(cfg, batch_size, max_len)
    shape = (cfg.num_layers, batch_size, max_len, cfg.num_kv_heads, cfg.head_dim)
    return KVCache(
        k_NxBxSxKxDh=jnp.zeros(shape, cfg.dtype),
        v_NxBxSxKxDh=jnp.zeros(shape, cfg.dtype),
        positions_BxS=jnp.zeros((batch_size, max_len), jnp.int32),
        segment_ids_BxS=jnp.zeros((batch_size, max_len), jnp.int32),
        length=jnp.zeros((), jnp.int32),
    )


def _layer_caches(cache: KVCache | PagedKVCache, positions_BxL, segment_ids_BxL):
    """(layer cache of (k stack, v stack, layer), the new cache of the final stacks): what
    each block reads and what the call returns, for either layout."""
    if isinstance(cache, PagedKVCache):
        slots_BxL, lengths_B = paged_cache.write_slots(cache, positions_BxL, segment_ids_BxL)
        return (
            lambda k_all, v_all, layer: PagedLayerCache(k_all, v_all, layer, slots_BxL, lengths_B),
            lambda k_all, v_all: PagedKVCache(k_all, v_all, lengths_B),
        )
    slot_positions_BxS = jax.lax.dynamic_update_slice(
        cache.positions_BxS, positions_BxL.astype(jnp.int32), (0, cache.length)
    )
    slot_segment_ids_BxS = jax.lax.dynamic_update_slice(
        cache.segment_ids_BxS, segment_ids_BxL.astype(jnp.int32), (0, cache.length)
    )
    length = cache.length + positions_BxL.shape[1]
    return (
        lambda k_all, v_all, layer: LayerCache(
            k_all, v_all, layer, slot_positions_BxS, slot_segment_ids_BxS, cache.length
        ),
        lambda k_all, v_all: KVCache(k_all, v_all, slot_positions_BxS, slot_segment_ids_BxS, length),
    )


def apply_with_cache(
    params: Params,
    cfg: ModelConfig,
    tokens_BxL,
    positions_BxL,
    segment_ids_BxL,
    cache: KVCache | PagedKVCache,
) -> tuple[jax.Array, KVCache | PagedKVCache]:
    """(final-normed hidden [B, L, D], updated cache) for L new tokens after those cached.

    The tokens are written to slots [cache.length, cache.length + L) and attend to every
    slot the masking rule allows, themselves included: a left-padded prompt is one call
    (prefill), each generated token one more (decode). The caller sizes the cache; writing
    past its end is not detectable under jit and would overwrite the last slots. A paged
    cache (`paged_cache.py`) takes each token at the slot of its position instead.

    The layers run as plain functions over the parameter tree (a Python loop, or
    `lax.scan` over stacked layers) rather than through the `Decoder` module, so the cache
    can be threaded through the scan's carry and updated in place.
    """
    b, l = tokens_BxL.shape
    rows = cache[0].shape[1]
    slots = cache.positions_BxS.shape[1] if isinstance(cache, KVCache) else cache.k_NxBxKxSxDh.shape[3]
    if rows != b or l > slots:
        raise ValueError(
            f"tokens [{b}, {l}] do not fit a cache of {rows} rows x {slots} slots; "
            f"size it with init_cache(cfg, {b}, max_len)"
        )
    adapters = params.adapters if isinstance(params, lora.Adapted) else None
    params = lora.base_of(params)
    x_BxLxD = embed(cfg, params["embedding"], tokens_BxL, None)
    rope_tables = layer_rope_tables(cfg, positions_BxL)
    layer_cache, new_cache = _layer_caches(cache, positions_BxL, segment_ids_BxL)

    def run_block(layer_type, layer_params, layer_adapters, x, is_sliding, layer, k_all, v_all):
        layer_vars = {"params": layer_params}
        if layer_adapters is not None:
            layer_vars["lora"] = layer_adapters
        return Block(cfg, layer_type).apply(
            layer_vars,
            x,
            is_sliding,
            rope_tables,
            positions_BxL,
            segment_ids_BxL,
            layer_cache(k_all, v_all, layer),
        )

    # Both layouts lead with the stacked keys and values.
    k_all, v_all = cache[0], cache[1]
    if cfg.scan_layers:
        layer_type, is_sliding_N = scan_schedule(cfg)

        def body(carry, per_layer):
            x, k_all, v_all = carry
            layer_params, layer_adapters, is_sliding, layer = per_layer
            x, (k_all, v_all) = run_block(
                layer_type, layer_params, layer_adapters, x, is_sliding, layer, k_all, v_all
            )
            return (x, k_all, v_all), None

        layer_adapters = None if adapters is None else adapters["layers"]
        layers = (params["layers"], layer_adapters, is_sliding_N, jnp.arange(cfg.num_layers, dtype=jnp.int32))
        (x_BxLxD, k_all, v_all), _ = jax.lax.scan(body, (x_BxLxD, k_all, v_all), layers)
    else:
        for i, layer_type in enumerate(cfg.layer_types):
            layer_adapters = None if adapters is None else adapters[f"layers_{i}"]
            x_BxLxD, (k_all, v_all) = run_block(
                layer_type, params[f"layers_{i}"], layer_adapters, x_BxLxD, None, i, k_all, v_all
            )
    hidden_BxLxD = RMSNorm(cfg).apply({"params": params["final_norm"]}, x_BxLxD)
    return hidden_BxLxD, new_cache(k_all, v_all)
