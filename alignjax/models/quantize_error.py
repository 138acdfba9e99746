"""How far a quantized base's logits are from the full-precision base's (`alignjax bench
quantize`): the number QLoRA users weigh against the memory it saves."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from alignjax.models import decoder, head, quantize
from alignjax.models.config import ModelConfig


def logits_error(params, cfg: ModelConfig, tokens_BxL: np.ndarray, kind: str) -> dict[str, float]:
    """Float32 logits of `params` vs of the same parameters with their projection kernels
    quantized (`kind`), on `tokens_BxL`: absolute errors, relative to the logits' spread,
    the next-token distribution's KL and the top-1 agreement."""
    b, length = tokens_BxL.shape
    positions_BxL = jnp.broadcast_to(jnp.arange(length), (b, length))
    segments_BxL = jnp.ones((b, length), jnp.int32)

    @jax.jit
    def logits(p):
        hidden_BxLxD = decoder.apply(p, cfg, tokens_BxL, positions_BxL, segments_BxL)
        return head.logits_BxLxV(p, cfg, hidden_BxLxD)

    full_BxLxV = logits(params)
    quantized = jax.jit(lambda p: quantize.frozen(p, kind, jnp.dtype(cfg.param_dtype)))(params)
    quant_BxLxV = logits(quantized)
    err_BxLxV = jnp.abs(quant_BxLxV - full_BxLxV)
    logp_full = jax.nn.log_softmax(full_BxLxV, -1)
    logp_quant = jax.nn.log_softmax(quant_BxLxV, -1)
    kl_BxL = jnp.sum(jnp.exp(logp_full) * (logp_full - logp_quant), -1)
    top1 = jnp.argmax(full_BxLxV, -1) == jnp.argmax(quant_BxLxV, -1)
    base_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
    quant_bytes = sum(x.nbytes for x in jax.tree.leaves(quantized))
    return {
        "kind": kind,
        "tokens": int(b * length),
        "max_abs_logit_error": float(jnp.max(err_BxLxV)),
        "mean_abs_logit_error": float(jnp.mean(err_BxLxV)),
        "logit_std": float(jnp.std(full_BxLxV)),
        "mean_abs_error_over_logit_std": float(jnp.mean(err_BxLxV) / jnp.std(full_BxLxV)),
        "mean_next_token_kl": float(jnp.mean(kl_BxL)),
        "top1_agreement": float(jnp.mean(top1)),
        "base_bytes": int(base_bytes),
        "quantized_bytes": int(quant_bytes),
    }
