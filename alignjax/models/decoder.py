"""One configurable decoder for the Llama, Mistral, Qwen2/3 and Gemma 1/2/3 families.

`apply(params, cfg, tokens, positions, segment_ids)` returns final-normed hidden states;
the LM head lives in `head.py`, so losses can chunk the vocabulary instead of building
full logits. Every parameter dimension carries a logical axis name (see `LOGICAL_AXES`
users in `alignjax/core/sharding.py`), and layers can be scanned and rematerialised.

`apply_with_cache` is the generation path: it runs new tokens against a `KVCache` of
earlier keys and values (prefill, then one token per decode step) and returns the
updated cache, with the same parameters and the same masking rule as `apply`.

This module is the decoder's public entry; the pieces live beside it:
  layers.py          RMS norm and projections (with LoRA adapters)
  block.py           one transformer layer
  stack.py           the Flax module over the layers; parameter init and logical axes
  kv_cache.py        the cache and the forward pass against it
  paged_cache.py     the cache laid out as pages, for the TPU decode kernel
  decode_attention.py  the new tokens' attention over the cache, by target platform
  sequence_order.py  the zig-zag order that balances sequence-parallel attention
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from alignjax.core.sharding import constrain
from alignjax.models import lora
from alignjax.models.config import ModelConfig
from alignjax.models.kv_cache import KVCache, apply_with_cache, init_cache
from alignjax.models.layers import ACT_ROWS
from alignjax.models.paged_cache import PagedKVCache
from alignjax.models.sequence_order import balance_shards, balanced_index, load_balance_order, natural_order
from alignjax.models.stack import (
    Decoder,
    ExtraEmbeddings,
    Params,
    adapter_logical_axes,
    init_adapters,
    init_params,
    logical_axes,
)

__all__ = [
    "Decoder",
    "ExtraEmbeddings",
    "KVCache",
    "PagedKVCache",
    "Params",
    "adapter_logical_axes",
    "apply",
    "apply_with_cache",
    "apply_with_intermediates",
    "init_adapters",
    "init_cache",
    "init_params",
    "logical_axes",
]


def _balanced_inputs(shards: int, tokens_BxL, positions_BxL, segment_ids_BxL, extra_embeddings):
    """The inputs in zig-zag order; soft tokens follow their rows' tokens."""
    tokens_BxL, positions_BxL, segment_ids_BxL = (
        load_balance_order(x, shards) for x in (tokens_BxL, positions_BxL, segment_ids_BxL)
    )
    if extra_embeddings is not None:
        where_L = jnp.asarray(balanced_index(tokens_BxL.shape[1], shards))
        extra_embeddings = extra_embeddings._replace(index_BxT=where_L[extra_embeddings.index_BxT])
    return tokens_BxL, positions_BxL, segment_ids_BxL, extra_embeddings


def _natural(shards: int, x_BxLx):
    """Back from zig-zag order, still split over the sequence shards."""
    x_BxLx = natural_order(x_BxLx, shards)
    return constrain(x_BxLx, *ACT_ROWS, *(["activation_embed"] if x_BxLx.ndim == 3 else []))


def apply(
    params: Params,
    cfg: ModelConfig,
    tokens_BxL,
    positions_BxL,
    segment_ids_BxL,
    extra_embeddings: ExtraEmbeddings | None = None,
):
    """Final-normed hidden states [B, L, D]. `params`: a decoder tree, or `lora.Adapted`."""
    shards = balance_shards(cfg, tokens_BxL.shape[1])
    inputs = (tokens_BxL, positions_BxL, segment_ids_BxL, extra_embeddings)
    if shards:
        inputs = _balanced_inputs(shards, *inputs)
    hidden_BxLxD = Decoder(cfg).apply(lora.variables(params), *inputs, rngs=lora.rngs(params))
    return _natural(shards, hidden_BxLxD) if shards else hidden_BxLxD


def apply_with_intermediates(
    params: Params,
    cfg: ModelConfig,
    tokens_BxL,
    positions_BxL,
    segment_ids_BxL,
    extra_embeddings: ExtraEmbeddings | None = None,
):
    """(hidden [B, L, D], per-layer hidden states [N, B, L, D], activation summaries).

    Activation summaries map a kind (attn_q, attn_k, attn_v, attn_out, mlp_out, residual)
    to per-token means over the feature dimension, stacked over layers: [N, B, L].
    """
    shards = balance_shards(cfg, tokens_BxL.shape[1])
    inputs = (tokens_BxL, positions_BxL, segment_ids_BxL, extra_embeddings)
    if shards:
        inputs = _balanced_inputs(shards, *inputs)
    hidden_BxLxD, state = Decoder(cfg, collect=True).apply(
        lora.variables(params), *inputs, mutable=["intermediates"], rngs=lora.rngs(params)
    )
    inter = state["intermediates"]
    hidden_NxBxLxD = inter.pop("hidden_states")[0]
    if cfg.scan_layers:
        acts = {k: v[0] for k, v in inter["layers"].items()}
    else:
        per_layer = [inter[f"layers_{i}"] for i in range(cfg.num_layers)]
        acts = {k: jnp.stack([layer[k][0] for layer in per_layer]) for k in per_layer[0]}
    if shards:
        natural = jax.vmap(functools.partial(_natural, shards))
        return _natural(shards, hidden_BxLxD), natural(hidden_NxBxLxD), jax.tree.map(natural, acts)
    return hidden_BxLxD, hidden_NxBxLxD, acts
