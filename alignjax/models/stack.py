"""The decoder as a Flax module: embedding, the layer stack, the final norm.

Layers run as a Python loop or, with `model.scan_layers`, as one `nn.scan` over stacked
parameters, each optionally rematerialised (`model.remat_policy`). The parameter tree this
module declares is the decoder's: `init_params`, `init_adapters` and the logical axes of
both come from it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from alignjax.core.sharding import constrain
from alignjax.models import lora
from alignjax.models import rope as rope_lib
from alignjax.models.block import Block
from alignjax.models.config import SLIDING, ModelConfig
from alignjax.models.layers import ACT_ROWS, RMSNorm, kernel_init, param

Params = dict[str, Any]


class ExtraEmbeddings(NamedTuple):
    """Soft tokens that replace the input embeddings at given row positions.

    The embeddings are spliced after any embedding scaling, i.e. they live in the same
    space as the rows of `embed * sqrt(D)` for Gemma.
    """

    embeds_BxTxD: jax.Array
    index_BxT: jax.Array


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


def embed(cfg: ModelConfig, embedding_VxD, tokens_BxL, extra_embeddings):
    """[B, L, D] input embeddings in the compute dtype, soft tokens spliced in."""
    dtype = jnp.dtype(cfg.dtype)
    # The lookup runs where the tokens are (rows over the batch axes, each row's tokens over
    # `sequence`), from the table gathered over `embed` as every FSDP kernel is for its
    # matmul. Left to itself, XLA cannot turn a lookup split over D into one split over L
    # and replicates the whole [B, L, D] output on every chip first.
    tokens_BxL = constrain(tokens_BxL, *ACT_ROWS)
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


def layer_rope_tables(cfg: ModelConfig, positions_BxL):
    """Rotary (cos, sin) tables per layer type at these positions."""
    return {
        layer_type: rope_lib.rotary_tables(positions_BxL, rope_lib.inv_frequencies(r, cfg.head_dim))
        for layer_type, r in cfg.rope
    }


def scan_schedule(cfg: ModelConfig):
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
        embedding_VxD = param(
            self, "embedding", (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), kernel_init
        )
        if not cfg.tie_embeddings:
            # Declared here so init creates it; `head.py` uses it outside the forward pass.
            param(self, "lm_head", (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), kernel_init)

        x_BxLxD = constrain(
            embed(cfg, embedding_VxD, tokens_BxL, extra_embeddings), *ACT_ROWS, "activation_embed"
        )
        rope_tables = layer_rope_tables(cfg, positions_BxL)
        block_cls = Block
        if cfg.remat_policy != "none":
            block_cls = nn.remat(
                Block, policy=_REMAT_POLICIES[cfg.remat_policy], prevent_cse=not cfg.scan_layers
            )

        if cfg.scan_layers:
            scan_layer_type, is_sliding_N = scan_schedule(cfg)
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
