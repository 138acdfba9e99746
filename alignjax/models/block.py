"""One pre-norm transformer layer of the decoder, with or without a KV cache.

The layer is attention (grouped-query, rotary, optionally windowed and soft-capped) then
a gated MLP, each with a residual connection; Gemma 2/3 add sandwich norms. Activations
are named (`checkpoint_name`) so the rematerialisation policies of `stack.py` can choose
what the backward keeps.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from alignjax.core.sharding import constrain
from alignjax.models import decode_attention
from alignjax.models import rope as rope_lib
from alignjax.models.attention import attention
from alignjax.models.config import FULL, SLIDING, ModelConfig
from alignjax.models.layers import ACT_ROWS, Projection, RMSNorm
from alignjax.models.paged_cache import PagedLayerCache
from alignjax.models.sequence_order import balance_shards


class LayerCache(NamedTuple):
    """What one block needs to read and update its slice of the cache."""

    k_NxBxSxKxDh: jax.Array
    v_NxBxSxKxDh: jax.Array
    layer: jax.Array | int
    positions_BxS: jax.Array  # already including the tokens being written
    segment_ids_BxS: jax.Array
    write_at: jax.Array


def _write_layer(cache: LayerCache, k_BxLxKxDh, v_BxLxKxDh):
    """The cache stacks with this layer's new keys and values written at `write_at`.

    Updating the whole stack in place (rather than returning one layer's slice) lets XLA
    alias the buffers inside loops, so a decode step writes L slots, not the cache.
    """
    start = (jnp.asarray(cache.layer, jnp.int32), 0, jnp.asarray(cache.write_at, jnp.int32), 0, 0)
    dtype = cache.k_NxBxSxKxDh.dtype
    k_all = jax.lax.dynamic_update_slice(cache.k_NxBxSxKxDh, k_BxLxKxDh[None].astype(dtype), start)
    v_all = jax.lax.dynamic_update_slice(cache.v_NxBxSxKxDh, v_BxLxKxDh[None].astype(dtype), start)
    return k_all, v_all


def _activation(name: str, x):
    if name == "silu":
        return jax.nn.silu(x)
    return jax.nn.gelu(x, approximate=name == "gelu_tanh")


class Block(nn.Module):
    """One pre-norm transformer layer.

    `layer_type` is static when known; under a scan over layers of mixed types it is None
    and the per-layer `is_sliding` flag selects the window and rotary table at run time.
    With a `cache`, the new keys and values are written into it, attention runs over all of
    its slots, and the second output is the updated (k, v) stacks instead of a summary.
    """

    cfg: ModelConfig
    layer_type: str | None
    collect: bool = False

    def _record(self, name: str, x_BxLx):
        # MaPO-style masks need a per-token summary of each activation, not the activation.
        if self.collect:
            flat = x_BxLx.reshape(x_BxLx.shape[:2] + (-1,)).astype(jnp.float32)
            self.sow("intermediates", name, jnp.mean(flat, axis=-1))

    @nn.compact
    def __call__(self, x_BxLxD, is_sliding, rope_tables, positions_BxL, segment_ids_BxL, cache=None):
        cfg = self.cfg
        d, h, dh = cfg.hidden_size, cfg.num_heads, cfg.head_dim

        y = RMSNorm(cfg, name="input_norm")(x_BxLxD)
        q, kk, v = self._rotated_qkv(y, is_sliding, rope_tables)
        attn, kv_stacks = self._attend(q, kk, v, is_sliding, positions_BxL, segment_ids_BxL, cache)
        attn = Projection(cfg, (h, dh), (d,), ("q_heads", "head_dim"), ("embed",), cfg.o_bias, name="o")(attn)
        attn = checkpoint_name(attn, "out_proj")
        self._record("attn_out", attn)
        if cfg.sandwich_norms:
            attn = RMSNorm(cfg, name="post_attn_norm")(attn)
        x_BxLxD = x_BxLxD + attn

        mlp = self._mlp(x_BxLxD)
        x_BxLxD = constrain(x_BxLxD + mlp, *ACT_ROWS, "activation_embed")
        self._record("residual", x_BxLxD)
        if cache is not None:
            return x_BxLxD, kv_stacks
        return x_BxLxD, (x_BxLxD if self.collect else None)

    def _rotated_qkv(self, y, is_sliding, rope_tables):
        """Queries, keys and values of the normed input, queries and keys rotated."""
        cfg = self.cfg
        d, h, k, dh = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        q = Projection(cfg, (d,), (h, dh), ("embed",), ("q_heads", "head_dim"), cfg.qkv_bias, name="q")(y)
        kk = Projection(cfg, (d,), (k, dh), ("embed",), ("kv_heads", "head_dim"), cfg.qkv_bias, name="k")(y)
        v = Projection(cfg, (d,), (k, dh), ("embed",), ("kv_heads", "head_dim"), cfg.qkv_bias, name="v")(y)
        if cfg.qk_norm:
            q = RMSNorm(cfg, "head_dim", name="q_norm")(q)
            kk = RMSNorm(cfg, "head_dim", name="k_norm")(kk)
        q = constrain(q, *ACT_ROWS, "activation_heads", None)
        kk = constrain(kk, *ACT_ROWS, "activation_kv_heads", None)
        v = constrain(v, *ACT_ROWS, "activation_kv_heads", None)
        q, kk, v = (
            checkpoint_name(x, n) for x, n in ((q, "query_proj"), (kk, "key_proj"), (v, "value_proj"))
        )
        self._record("attn_q", q)
        self._record("attn_k", kk)
        self._record("attn_v", v)

        if self.layer_type is not None:
            cos, sin = rope_tables[self.layer_type]
        else:
            cos = jnp.where(is_sliding, rope_tables[SLIDING][0], rope_tables[FULL][0])
            sin = jnp.where(is_sliding, rope_tables[SLIDING][1], rope_tables[FULL][1])
        q = rope_lib.apply_rotary(q, cos, sin)
        kk = rope_lib.apply_rotary(kk, cos, sin)
        return q, kk, v

    def _attend(self, q, kk, v, is_sliding, positions_BxL, segment_ids_BxL, cache):
        """(attention output [B, L, H, Dh], the cache's updated (k, v) stacks or None)."""
        cfg = self.cfg
        if isinstance(cache, PagedLayerCache):
            # A paged cache exists only for models without sliding layers (decode_attention.unsupported).
            attn, kv_stacks = decode_attention.attend(cfg, cache, q, kk, v, positions_BxL, segment_ids_BxL)
            return checkpoint_name(attn, "context"), kv_stacks
        if cache is None:
            keys, values, k_positions, k_segment_ids = kk, v, positions_BxL, segment_ids_BxL
            backend = cfg.attention_backend
            sequence_parallel = cfg.sequence_parallel
            kv_stacks = None
        else:
            k_all, v_all = _write_layer(cache, kk, v)
            keys, values = k_all[cache.layer], v_all[cache.layer]
            k_positions, k_segment_ids = cache.positions_BxS, cache.segment_ids_BxS
            # Cache slots are not in query order, so kernels that mask by index (splash) do not
            # apply; the einsum masks by slot position and segment. At one query per row decode
            # is bandwidth-bound anyway; prefill pays for [L, S] logits, as under backend=xla.
            backend = "xla"
            sequence_parallel = None
            kv_stacks = (k_all, v_all)

        def attend(window):
            return attention(
                q,
                keys,
                values,
                q_positions_BxL=positions_BxL,
                k_positions_BxS=k_positions,
                q_segment_ids_BxL=segment_ids_BxL,
                k_segment_ids_BxS=k_segment_ids,
                scale=cfg.scale,
                window=window,
                softcap=cfg.attn_logit_softcap,
                backend=backend,
                max_segments=cfg.max_segments_per_row,
                sequence_parallel=sequence_parallel,
                sequence_zigzag=balance_shards(cfg, positions_BxL.shape[1]) > 0,
            )

        if self.layer_type is not None:
            attn = attend(cfg.sliding_window if self.layer_type == SLIDING else None)
        else:
            attn = jax.lax.cond(is_sliding, lambda: attend(cfg.sliding_window), lambda: attend(None))
        return checkpoint_name(attn, "context"), kv_stacks

    def _mlp(self, x_BxLxD):
        """The gated MLP of the normed residual stream (post-normed under sandwich norms)."""
        cfg = self.cfg
        d, f = cfg.hidden_size, cfg.intermediate_size
        y = RMSNorm(cfg, name="pre_mlp_norm")(x_BxLxD)
        gate = checkpoint_name(
            Projection(cfg, (d,), (f,), ("embed",), ("mlp",), cfg.mlp_bias, name="gate")(y), "mlp_gate"
        )
        up = checkpoint_name(
            Projection(cfg, (d,), (f,), ("embed",), ("mlp",), cfg.mlp_bias, name="up")(y), "mlp_up"
        )
        hidden_BxLxF = constrain(_activation(cfg.activation, gate) * up, *ACT_ROWS, "activation_mlp")
        mlp = Projection(cfg, (f,), (d,), ("mlp",), ("embed",), cfg.mlp_bias, name="down")(hidden_BxLxF)
        mlp = checkpoint_name(mlp, "mlp_down")
        self._record("mlp_out", mlp)
        if cfg.sandwich_norms:
            mlp = RMSNorm(cfg, name="post_mlp_norm")(mlp)
        return mlp
