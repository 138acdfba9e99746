"""Per-sequence reductions of per-token log-probs under a loss mask."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def as_float(x: jax.Array) -> jax.Array:
    """At least float32: bf16 inputs are upcast, float64 (x64 tests) stays float64."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def sequence_logps(token_logps_BxL: jax.Array, mask_BxL: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sum of log-probs over masked tokens, number of masked tokens), each [B].

    mask_BxL marks response tokens (1) vs prompt and padding (0). Masked-out entries
    are selected away rather than multiplied, so a -inf or NaN logp sitting on a
    padding position cannot leak into the sum.
    """
    if token_logps_BxL.shape != mask_BxL.shape:
        raise ValueError(
            f"token_logps_BxL {token_logps_BxL.shape} and mask_BxL {mask_BxL.shape} must have the same shape."
        )
    token_logps_BxL = as_float(token_logps_BxL)
    keep_BxL = mask_BxL.astype(bool)
    sums_B = jnp.sum(jnp.where(keep_BxL, token_logps_BxL, 0.0), axis=-1)
    counts_B = jnp.sum(keep_BxL, axis=-1).astype(sums_B.dtype)
    return sums_B, counts_B


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of x over mask != 0; 0 when the mask is empty (never NaN)."""
    keep = mask.astype(bool)
    total = jnp.sum(jnp.where(keep, as_float(x), 0.0))
    return total / jnp.maximum(jnp.sum(keep), 1).astype(total.dtype)
