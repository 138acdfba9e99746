"""One configurable decoder for the Llama, Mistral, Qwen2/3 and Gemma 1/2/3 families.

`apply(params, cfg, tokens, positions, segment_ids)` returns final-normed hidden states;
the LM head lives in `head.py`, so losses can chunk the vocabulary instead of building
full logits. Every parameter dimension carries a logical axis name (see `LOGICAL_AXES`
users in `alignjax/sharding.py`), and layers can be scanned and rematerialised.

`apply_with_cache` is the generation path: it runs new tokens against a `KVCache` of
earlier keys and values (prefill, then one token per decode step) and returns the
updated cache, with the same parameters and the same masking rule as `apply`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from alignjax.models import lora
from alignjax.models import rope as rope_lib
from alignjax.models import sequence_parallel as sp
from alignjax.models.attention import attention
from alignjax.models.config import FULL, SLIDING, ModelConfig
from alignjax.models.quantize import QTensor
from alignjax.sharding import constrain

Params = dict[str, Any]


class ExtraEmbeddings(NamedTuple):
    """Soft tokens that replace the input embeddings at given row positions.

    The embeddings are spliced after any embedding scaling, i.e. they live in the same
    space as the rows of `embed * sqrt(D)` for Gemma.
    """

    embeds_BxTxD: jax.Array
    index_BxT: jax.Array


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


class _LayerCache(NamedTuple):
    """What one block needs to read and update its slice of the cache."""

    k_NxBxSxKxDh: jax.Array
    v_NxBxSxKxDh: jax.Array
    layer: jax.Array | int
    positions_BxS: jax.Array  # already including the tokens being written
    segment_ids_BxS: jax.Array
    write_at: jax.Array


_ACT_ROWS = ("activation_batch", "activation_length")
_names = jax.checkpoint_policies.save_only_these_names


def _offload(*names: str):
    return jax.checkpoint_policies.save_and_offload_only_these_names(
        names_which_can_be_saved=[],
        names_which_can_be_offloaded=list(names),
        offload_src="device",
        offload_dst="pinned_host",
    )


# Rematerialisation inside a layer, named by what the backward keeps (MaxText's set). The
# residual stream between layers is always kept: a scan saves its carry.
_REMAT_POLICIES = {
    "minimal": jax.checkpoint_policies.nothing_saveable,  # recompute the whole layer
    "full": jax.checkpoint_policies.nothing_saveable,  # the same, under its older name
    "save_qkv_proj": _names("query_proj", "key_proj", "value_proj"),
    "save_out_proj": _names("out_proj"),
    "save_dot_except_mlp": _names("query_proj", "key_proj", "value_proj", "out_proj"),
    "save_dot_with_context_except_mlp": _names("query_proj", "key_proj", "value_proj", "context", "out_proj"),
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # every projection
    # Host offload: the named activations go to pinned host memory during the forward and
    # come back for the backward, trading PCIe / host bandwidth for HBM.
    "qkv_proj_offloaded": _offload("query_proj", "key_proj", "value_proj"),
    "minimal_offloaded": _offload(
        "query_proj", "key_proj", "value_proj", "context", "out_proj", "mlp_gate", "mlp_up", "mlp_down"
    ),
}


def _param(module: nn.Module, name: str, shape, axes, init):
    dtype = jnp.dtype(module.cfg.param_dtype)
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


_kernel_init = nn.initializers.normal(stddev=0.02)


class RMSNorm(nn.Module):
    cfg: ModelConfig
    axis_name: str = "norm"

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        init = nn.initializers.zeros if cfg.norm_plus_one else nn.initializers.ones
        scale = _param(self, "scale", (x.shape[-1],), (self.axis_name,), init)
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + cfg.norm_eps)
        if cfg.norm_plus_one:
            # Gemma multiplies by (1 + w) in float32 before casting back.
            return (normed * (1.0 + scale.astype(jnp.float32))).astype(x.dtype)
        # Llama-style: cast first, then multiply by the weight in the compute dtype.
        return normed.astype(x.dtype) * scale.astype(x.dtype)


class Projection(nn.Module):
    """A dense layer whose kernel keeps the head structure ([D, H, Dh] and friends)."""

    cfg: ModelConfig
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    in_axes: tuple[str, ...]
    out_axes: tuple[str, ...]
    use_bias: bool = False

    @nn.compact
    def __call__(self, x):
        dtype = jnp.dtype(self.cfg.dtype)
        stored = self.get_variable("params", "kernel") if self.has_variable("params", "kernel") else None
        if isinstance(stored, QTensor):
            # A QLoRA base: dequantized here, inside the layer, so one layer's kernel is
            # materialised at a time (Flax's param() would reject the codes' shape).
            kernel = stored.dequantize(dtype)
        else:
            kernel = _param(
                self, "kernel", self.in_shape + self.out_shape, self.in_axes + self.out_axes, _kernel_init
            )
        n_in = len(self.in_shape)
        x_axes = tuple(range(x.ndim - n_in, x.ndim))
        y = jax.lax.dot_general(
            x.astype(dtype), kernel.astype(dtype), ((x_axes, tuple(range(n_in))), ((), ()))
        )
        if self.use_bias:
            bias = _param(self, "bias", self.out_shape, self.out_axes, nn.initializers.zeros)
            y = y + bias.astype(dtype)
        cfg = self.cfg
        # Adapters when this projection is a target and they exist: the base alone (the
        # reference of a LoRA run) is applied without the "lora" collection.
        if self.name in cfg.lora_targets and (self.has_variable("lora", "a") or self.is_initializing()):
            y = y + self._lora(x, dtype, n_in)
        return y

    def _lora(self, x, dtype, n_in: int):
        cfg, r = self.cfg, self.cfg.lora_rank
        if cfg.lora_dropout > 0 and self.has_rng(lora.DROPOUT_RNG):
            x = lora.dropout(x, cfg.lora_dropout, self.make_rng(lora.DROPOUT_RNG))
        pdtype = jnp.dtype(cfg.param_dtype)

        def boxed(init, shape, axes):
            return nn.with_logical_partitioning(lambda: init(self.make_rng("params"), shape, pdtype), axes)()

        a = self.variable(
            "lora", "a", boxed, lora.a_init, self.in_shape + (r,), self.in_axes + ("lora_rank",)
        ).value
        b = self.variable(
            "lora", "b", boxed, nn.initializers.zeros, (r,) + self.out_shape, ("lora_rank",) + self.out_axes
        ).value
        return lora.delta(x, a, b, n_in, cfg.lora_scale, dtype)


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
        d, h, k, dh, f = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.intermediate_size

        y = RMSNorm(cfg, name="input_norm")(x_BxLxD)
        q = Projection(cfg, (d,), (h, dh), ("embed",), ("q_heads", "head_dim"), cfg.qkv_bias, name="q")(y)
        kk = Projection(cfg, (d,), (k, dh), ("embed",), ("kv_heads", "head_dim"), cfg.qkv_bias, name="k")(y)
        v = Projection(cfg, (d,), (k, dh), ("embed",), ("kv_heads", "head_dim"), cfg.qkv_bias, name="v")(y)
        if cfg.qk_norm:
            q = RMSNorm(cfg, "head_dim", name="q_norm")(q)
            kk = RMSNorm(cfg, "head_dim", name="k_norm")(kk)
        q = constrain(q, *_ACT_ROWS, "activation_heads", None)
        kk = constrain(kk, *_ACT_ROWS, "activation_kv_heads", None)
        v = constrain(v, *_ACT_ROWS, "activation_kv_heads", None)
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

        if cache is None:
            keys, values, k_positions, k_segment_ids = kk, v, positions_BxL, segment_ids_BxL
            backend = cfg.attention_backend
            sequence_parallel = cfg.sequence_parallel
        else:
            k_all, v_all = _write_layer(cache, kk, v)
            keys, values = k_all[cache.layer], v_all[cache.layer]
            k_positions, k_segment_ids = cache.positions_BxS, cache.segment_ids_BxS
            # Cache slots are not in query order, so kernels that mask by index (splash) do not
            # apply; the einsum masks by slot position and segment. At one query per row decode
            # is bandwidth-bound anyway; prefill pays for [L, S] logits, as under backend=xla.
            backend = "xla"
            sequence_parallel = None

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
                sequence_zigzag=_balance_shards(cfg, positions_BxL.shape[1]) > 0,
            )

        if self.layer_type is not None:
            attn = attend(cfg.sliding_window if self.layer_type == SLIDING else None)
        else:
            attn = jax.lax.cond(is_sliding, lambda: attend(cfg.sliding_window), lambda: attend(None))
        attn = checkpoint_name(attn, "context")
        attn = Projection(cfg, (h, dh), (d,), ("q_heads", "head_dim"), ("embed",), cfg.o_bias, name="o")(attn)
        attn = checkpoint_name(attn, "out_proj")
        self._record("attn_out", attn)
        if cfg.sandwich_norms:
            attn = RMSNorm(cfg, name="post_attn_norm")(attn)
        x_BxLxD = x_BxLxD + attn

        y = RMSNorm(cfg, name="pre_mlp_norm")(x_BxLxD)
        gate = checkpoint_name(
            Projection(cfg, (d,), (f,), ("embed",), ("mlp",), cfg.mlp_bias, name="gate")(y), "mlp_gate"
        )
        up = checkpoint_name(
            Projection(cfg, (d,), (f,), ("embed",), ("mlp",), cfg.mlp_bias, name="up")(y), "mlp_up"
        )
        hidden_BxLxF = constrain(_activation(cfg.activation, gate) * up, *_ACT_ROWS, "activation_mlp")
        mlp = Projection(cfg, (f,), (d,), ("mlp",), ("embed",), cfg.mlp_bias, name="down")(hidden_BxLxF)
        mlp = checkpoint_name(mlp, "mlp_down")
        self._record("mlp_out", mlp)
        if cfg.sandwich_norms:
            mlp = RMSNorm(cfg, name="post_mlp_norm")(mlp)
        x_BxLxD = constrain(x_BxLxD + mlp, *_ACT_ROWS, "activation_embed")
        self._record("residual", x_BxLxD)
        if cache is not None:
            return x_BxLxD, (k_all, v_all)
        return x_BxLxD, (x_BxLxD if self.collect else None)


def _write_layer(cache: _LayerCache, k_BxLxKxDh, v_BxLxKxDh):
    """The cache stacks with this layer's new keys and values written at `write_at`.

    Updating the whole stack in place (rather than returning one layer's slice) lets XLA
    alias the buffers inside loops, so a decode step writes L slots, not the cache.
    """
    start = (jnp.asarray(cache.layer, jnp.int32), 0, jnp.asarray(cache.write_at, jnp.int32), 0, 0)
    dtype = cache.k_NxBxSxKxDh.dtype
    k_all = jax.lax.dynamic_update_slice(cache.k_NxBxSxKxDh, k_BxLxKxDh[None].astype(dtype), start)
    v_all = jax.lax.dynamic_update_slice(cache.v_NxBxSxKxDh, v_BxLxKxDh[None].astype(dtype), start)
    return k_all, v_all


def _embed(cfg: ModelConfig, embedding_VxD, tokens_BxL, extra_embeddings):
    dtype = jnp.dtype(cfg.dtype)
    # The lookup runs where the tokens are (rows over the batch axes, each row's tokens over
    # `sequence`), from the table gathered over `embed` as every FSDP kernel is for its
    # matmul. Left to itself, XLA cannot turn a lookup split over D into one split over L
    # and replicates the whole [B, L, D] output on every chip first.
    tokens_BxL = constrain(tokens_BxL, *_ACT_ROWS)
    table_VxD = constrain(embedding_VxD.astype(dtype), "vocab", None)
    x_BxLxD = jnp.take(table_VxD, tokens_BxL, axis=0)
    if cfg.scale_embeddings:
        # Gemma rounds sqrt(D) to the compute dtype before scaling, and so must we.
        x_BxLxD = x_BxLxD * jnp.asarray(cfg.hidden_size**0.5, dtype)
    if extra_embeddings is not None:
        rows_Bx1 = jnp.arange(tokens_BxL.shape[0])[:, None]
        x_BxLxD = x_BxLxD.at[rows_Bx1, extra_embeddings.index_BxT].set(
            extra_embeddings.embeds_BxTxD.astype(dtype)
        )
    return x_BxLxD


def _rope_tables(cfg: ModelConfig, positions_BxL):
    return {
        layer_type: rope_lib.rotary_tables(positions_BxL, rope_lib.inv_frequencies(r, cfg.head_dim))
        for layer_type, r in cfg.rope
    }


def _scan_schedule(cfg: ModelConfig):
    """(static layer type, or None when layers mix types; is_sliding [N]) for a scan over
    stacked layers: one traced body serves every layer, so a per-layer type becomes data."""
    uniform = len(set(cfg.layer_types)) == 1
    return (cfg.layer_types[0] if uniform else None), jnp.asarray([t == SLIDING for t in cfg.layer_types])


class Decoder(nn.Module):
    """`collect=True` also sows per-layer hidden states and activation summaries."""

    cfg: ModelConfig
    collect: bool = False

    @nn.compact
    def __call__(self, tokens_BxL, positions_BxL, segment_ids_BxL, extra_embeddings=None):
        cfg = self.cfg
        embedding_VxD = _param(
            self, "embedding", (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), _kernel_init
        )
        if not cfg.tie_embeddings:
            # Declared here so init creates it; `head.py` uses it outside the forward pass.
            _param(self, "lm_head", (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), _kernel_init)

        x_BxLxD = constrain(
            _embed(cfg, embedding_VxD, tokens_BxL, extra_embeddings), *_ACT_ROWS, "activation_embed"
        )
        rope_tables = _rope_tables(cfg, positions_BxL)
        block_cls = Block
        if cfg.remat_policy != "none":
            block_cls = nn.remat(
                Block, policy=_REMAT_POLICIES[cfg.remat_policy], prevent_cse=not cfg.scan_layers
            )

        if cfg.scan_layers:
            scan_layer_type, is_sliding_N = _scan_schedule(cfg)
            scanned = nn.scan(
                block_cls,
                variable_axes={"params": 0, "lora": 0, "intermediates": 0},
                split_rngs={"params": True, lora.DROPOUT_RNG: True},
                in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast),
                length=cfg.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x_BxLxD, hidden_NxBxLxD = scanned(cfg, scan_layer_type, self.collect, name="layers")(
                x_BxLxD, is_sliding_N, rope_tables, positions_BxL, segment_ids_BxL
            )
        else:
            hidden = []
            for i, layer_type in enumerate(cfg.layer_types):
                x_BxLxD, _ = block_cls(cfg, layer_type, self.collect, name=f"layers_{i}")(
                    x_BxLxD, None, rope_tables, positions_BxL, segment_ids_BxL
                )
                hidden.append(x_BxLxD)
            hidden_NxBxLxD = jnp.stack(hidden) if self.collect else None
        if self.collect:
            self.sow("intermediates", "hidden_states", hidden_NxBxLxD)
        return RMSNorm(cfg, name="final_norm")(x_BxLxD)


def _for_init(cfg: ModelConfig) -> ModelConfig:
    """Initialisation traces one token, which no attention kernel but XLA's takes; the
    parameters do not depend on the backend."""
    return dataclasses.replace(cfg, attention_backend="xla")


def init_params(cfg: ModelConfig, rng: jax.Array) -> Params:
    """Random parameters (unboxed), e.g. for `model.preset` runs and tests."""
    tokens = jnp.zeros((1, 1), jnp.int32)
    variables = Decoder(_for_init(cfg)).init(rng, tokens, tokens, jnp.ones_like(tokens))
    return nn.unbox(variables["params"])


def init_adapters(cfg: ModelConfig, rng: jax.Array):
    """Fresh LoRA adapters (the "lora" collection) for `cfg.lora_targets`. Jitted so that
    only the adapters are computed: the base parameters the init also draws are dropped."""
    tokens = jnp.zeros((1, 1), jnp.int32)
    init = jax.jit(lambda r: Decoder(_for_init(cfg)).init(r, tokens, tokens, jnp.ones_like(tokens))["lora"])
    return nn.unbox(init(rng))


def adapter_logical_axes(cfg: ModelConfig):
    tokens = jnp.zeros((1, 1), jnp.int32)
    shapes = jax.eval_shape(lambda: Decoder(_for_init(cfg)).init(jax.random.key(0), tokens, tokens, tokens))
    return nn.get_partition_spec(shapes["lora"])


def logical_axes(cfg: ModelConfig):
    """A pytree like params whose leaves are PartitionSpecs of logical axis names."""
    tokens = jnp.zeros((1, 1), jnp.int32)
    shapes = jax.eval_shape(lambda: Decoder(_for_init(cfg)).init(jax.random.key(0), tokens, tokens, tokens))
    return nn.get_partition_spec(shapes["params"])


def _balance_shards(cfg: ModelConfig, length: int) -> int:
    """How many sequence shards rows are zig-zagged across on the way in (0: none)."""
    shards = sp.sequence_shards()
    return shards if cfg.sequence_load_balance and sp.balances(length, shards) else 0


def _balanced_inputs(shards: int, tokens_BxL, positions_BxL, segment_ids_BxL, extra_embeddings):
    """The inputs in zig-zag order; soft tokens follow their rows' tokens."""
    tokens_BxL, positions_BxL, segment_ids_BxL = (
        sp.load_balance_order(x, shards) for x in (tokens_BxL, positions_BxL, segment_ids_BxL)
    )
    if extra_embeddings is not None:
        where_L = jnp.asarray(sp.balanced_index(tokens_BxL.shape[1], shards))
        extra_embeddings = extra_embeddings._replace(index_BxT=where_L[extra_embeddings.index_BxT])
    return tokens_BxL, positions_BxL, segment_ids_BxL, extra_embeddings


def _natural(shards: int, x_BxLx):
    """Back from zig-zag order, still split over the sequence shards."""
    x_BxLx = sp.natural_order(x_BxLx, shards)
    return constrain(x_BxLx, *_ACT_ROWS, *(["activation_embed"] if x_BxLx.ndim == 3 else []))


def apply(
    params: Params,
    cfg: ModelConfig,
    tokens_BxL,
    positions_BxL,
    segment_ids_BxL,
    extra_embeddings: ExtraEmbeddings | None = None,
):
    """Final-normed hidden states [B, L, D]. `params`: a decoder tree, or `lora.Adapted`."""
    shards = _balance_shards(cfg, tokens_BxL.shape[1])
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
    shards = _balance_shards(cfg, tokens_BxL.shape[1])
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


def init_cache(cfg: ModelConfig, batch_size: int, max_len: int) -> KVCache:
    """An empty cache of `max_len` slots per row, in the compute dtype."""
    shape = (cfg.num_layers, batch_size, max_len, cfg.num_kv_heads, cfg.head_dim)
    return KVCache(
        k_NxBxSxKxDh=jnp.zeros(shape, cfg.dtype),
        v_NxBxSxKxDh=jnp.zeros(shape, cfg.dtype),
        positions_BxS=jnp.zeros((batch_size, max_len), jnp.int32),
        segment_ids_BxS=jnp.zeros((batch_size, max_len), jnp.int32),
        length=jnp.zeros((), jnp.int32),
    )


def apply_with_cache(
    params: Params, cfg: ModelConfig, tokens_BxL, positions_BxL, segment_ids_BxL, cache: KVCache
) -> tuple[jax.Array, KVCache]:
    """(final-normed hidden [B, L, D], updated cache) for L new tokens after those cached.

    The tokens are written to slots [cache.length, cache.length + L) and attend to every
    slot the masking rule allows, themselves included: a left-padded prompt is one call
    (prefill), each generated token one more (decode). The caller sizes the cache; writing
    past its end is not detectable under jit and would overwrite the last slots.

    The layers run as plain functions over the parameter tree (a Python loop, or
    `lax.scan` over stacked layers) rather than through the `Decoder` module, so the cache
    can be threaded through the scan's carry and updated in place.
    """
    b, l = tokens_BxL.shape
    if cache.positions_BxS.shape[0] != b or l > cache.positions_BxS.shape[1]:
        raise ValueError(
            f"tokens [{b}, {l}] do not fit a cache of {cache.positions_BxS.shape[0]} rows x "
            f"{cache.positions_BxS.shape[1]} slots; size it with init_cache(cfg, {b}, max_len)"
        )
    adapters = params.adapters if isinstance(params, lora.Adapted) else None
    params = lora.base_of(params)
    x_BxLxD = _embed(cfg, params["embedding"], tokens_BxL, None)
    rope_tables = _rope_tables(cfg, positions_BxL)
    slot_positions_BxS = jax.lax.dynamic_update_slice(
        cache.positions_BxS, positions_BxL.astype(jnp.int32), (0, cache.length)
    )
    slot_segment_ids_BxS = jax.lax.dynamic_update_slice(
        cache.segment_ids_BxS, segment_ids_BxL.astype(jnp.int32), (0, cache.length)
    )

    def run_block(layer_type, layer_params, layer_adapters, x, is_sliding, layer, k_all, v_all):
        layer_cache = _LayerCache(k_all, v_all, layer, slot_positions_BxS, slot_segment_ids_BxS, cache.length)
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
            layer_cache,
        )

    k_all, v_all = cache.k_NxBxSxKxDh, cache.v_NxBxSxKxDh
    if cfg.scan_layers:
        layer_type, is_sliding_N = _scan_schedule(cfg)

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
    new_cache = KVCache(k_all, v_all, slot_positions_BxS, slot_segment_ids_BxS, cache.length + l)
    return hidden_BxLxD, new_cache
