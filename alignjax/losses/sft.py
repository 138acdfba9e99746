"""SFT: token-mean negative log-likelihood over response tokens, as its own stage."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from alignjax.losses.sequence import as_float


def sft_loss(token_logps_BxL: jax.Array, loss_mask_BxL: jax.Array):
    """(loss, metrics): -sum(masked logps) / number of masked tokens.

    Every response token counts equally, whichever sequence it is in (the
    cross-entropy of HF/TRL SFT), so long responses weigh more than short ones.
    An all-zero mask gives loss 0 rather than NaN. Metrics: nll, num_tokens.
    """
    if token_logps_BxL.shape != loss_mask_BxL.shape:
        raise ValueError(
            f"token_logps_BxL {token_logps_BxL.shape} and loss_mask_BxL "
            f"{loss_mask_BxL.shape} must have the same shape."
        )
    keep_BxL = loss_mask_BxL.astype(bool)
    logps_BxL = as_float(token_logps_BxL)
    num_tokens = jnp.sum(keep_BxL)
    loss = -jnp.sum(jnp.where(keep_BxL, logps_BxL, 0.0)) / jnp.maximum(num_tokens, 1).astype(logps_BxL.dtype)
    return loss, {"nll": jax.lax.stop_gradient(loss), "num_tokens": num_tokens}
