"""The LM head, kept apart from the decoder so losses can chunk over the vocabulary."""

from __future__ import annotations

import jax.numpy as jnp

from alignjax.models.config import ModelConfig
from alignjax.models.lora import base_of


def unembedding_DxV(params, cfg: ModelConfig):
    """The [D, V] output matrix: the transposed embedding when tied."""
    params = base_of(params)
    if cfg.tie_embeddings:
        return params["embedding"].T
    return params["lm_head"]


def softcap_logits(logits, cap: float | None):
    if cap is None:
        return logits
    return jnp.tanh(logits / cap) * cap


def logits_BxLxV(params, cfg: ModelConfig, hidden_BxLxD):
    """Full float32 logits. For sampling and tests; training uses chunked log-probs."""
    w_DxV = unembedding_DxV(params, cfg).astype(cfg.dtype)
    logits = jnp.einsum(
        "bld,dv->blv", hidden_BxLxD.astype(cfg.dtype), w_DxV, preferred_element_type=jnp.float32
    )
    return softcap_logits(logits, cfg.final_logit_softcap)
