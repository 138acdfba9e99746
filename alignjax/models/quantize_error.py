"""How far a quantized base's logits are from the full-precision base's (`alignjax bench
quantize`): the number QLoRA users weigh against the memory it saves."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from alignjax.models import decoder, head, quantize
from alignjax.models.config import ModelConfig


def _logits_BxLxV(params, cfg: ModelConfig, tokens_BxL: np.ndarray) -> jax.Array:
    b, length = tokens_BxL.shape
    positions_BxL = jnp.broadcast_to(jnp.arange(length), (b, length))
    segments_BxL = jnp.ones((b, length), jnp.int32)
    hidden_BxLxD = decoder.apply(params, cfg, jnp.asarray(tokens_BxL), positions_BxL, segments_BxL)
    return head.logits_BxLxV(params, cfg, hidden_BxLxD)


def logits_errors(
    params, cfg: ModelConfig, token_sets: Sequence[np.ndarray], kind: str
) -> list[dict[str, float]]:
    """Float32 logits of `params` vs of the same parameters with their projection kernels
    quantized (`kind`, quantized once), on each `tokens_BxL` of `token_sets`: absolute errors,
    relative to the logits' spread, the next-token distribution's KL and the top-1 agreement."""
    logits = jax.jit(lambda p, t: _logits_BxLxV(p, cfg, t))
    quantized = jax.jit(lambda p: quantize.frozen(p, kind, jnp.dtype(cfg.param_dtype)))(params)
    base_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
    quant_bytes = sum(x.nbytes for x in jax.tree.leaves(quantized))
    out = []
    for tokens_BxL in token_sets:
        full_BxLxV = logits(params, tokens_BxL)
        quant_BxLxV = logits(quantized, tokens_BxL)
        err_BxLxV = jnp.abs(quant_BxLxV - full_BxLxV)
        logp_full_BxLxV = jax.nn.log_softmax(full_BxLxV, -1)
        logp_quant_BxLxV = jax.nn.log_softmax(quant_BxLxV, -1)
        kl_BxL = jnp.sum(jnp.exp(logp_full_BxLxV) * (logp_full_BxLxV - logp_quant_BxLxV), -1)
        top1_BxL = jnp.argmax(full_BxLxV, -1) == jnp.argmax(quant_BxLxV, -1)
        out.append(
            {
                "kind": kind,
                "tokens": int(tokens_BxL.size),
                "max_abs_logit_error": float(jnp.max(err_BxLxV)),
                "mean_abs_logit_error": float(jnp.mean(err_BxLxV)),
                "logit_std": float(jnp.std(full_BxLxV)),
                "mean_abs_error_over_logit_std": float(jnp.mean(err_BxLxV) / jnp.std(full_BxLxV)),
                "mean_next_token_kl": float(jnp.mean(kl_BxL)),
                "top1_agreement": float(jnp.mean(top1_BxL)),
                "base_bytes": int(base_bytes),
                "quantized_bytes": int(quant_bytes),
            }
        )
    return out
