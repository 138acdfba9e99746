"""MaPO token weights from reference-model activations (SparsePO weight source (b)).

For each activation kind (mlp_out, attn_q, attn_k, attn_v, attn_out, residual, ...)
and each layer: mean over the hidden dimension per token, z-score over the response
tokens of that sequence, min-max rescale to [0, 1] over the same tokens; then average
over layers within a kind and over kinds (each kind counts once, whatever its number
of layers). The result carries no gradient: it is a property of the frozen reference.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

from alignjax.losses.sequence import as_float


def _layer_masks(acts_NxBxLxD: jax.Array, keep_BxL: jax.Array, eps: float) -> jax.Array:
    a_NxBxL = jnp.mean(as_float(acts_NxBxLxD), axis=-1)
    keep = keep_BxL[None]
    count = jnp.maximum(jnp.sum(keep, axis=-1, keepdims=True), 1).astype(a_NxBxL.dtype)
    mean = jnp.sum(jnp.where(keep, a_NxBxL, 0.0), axis=-1, keepdims=True) / count
    var = jnp.sum(jnp.where(keep, jnp.square(a_NxBxL - mean), 0.0), axis=-1, keepdims=True) / count
    z_NxBxL = (a_NxBxL - mean) / (jnp.sqrt(var) + eps)
    lo = jnp.min(jnp.where(keep, z_NxBxL, jnp.inf), axis=-1, keepdims=True)
    hi = jnp.max(jnp.where(keep, z_NxBxL, -jnp.inf), axis=-1, keepdims=True)
    span = hi - lo
    # A sequence whose activations are flat (or a one-token response) carries no
    # ranking information: weight its tokens 1, i.e. plain DPO, rather than 0.
    flat = ~(span > eps)
    scaled = (z_NxBxL - jnp.where(flat, 0.0, lo)) / jnp.where(flat, 1.0, span)
    scaled = jnp.where(flat, 1.0, jnp.clip(scaled, 0.0, 1.0))
    return jnp.where(keep, scaled, 0.0)


def activation_mask(
    acts: Mapping[str, jax.Array], response_mask_BxL: jax.Array, eps: float = 1e-6
) -> jax.Array:
    """Token weights in [0, 1], [B, L], zero outside the response; no gradient.

    acts: {kind: activations [N layers, B, L, D_kind]} from the reference forward.
    response_mask_BxL: 1 on response tokens.
    """
    if not acts:
        raise ValueError(
            "activation_mask needs at least one activation kind, e.g. {'mlp_out': acts_NxBxLxD}."
        )
    keep_BxL = response_mask_BxL.astype(bool)
    per_kind = []
    for kind, acts_NxBxLxD in acts.items():
        if acts_NxBxLxD.ndim != 4 or acts_NxBxLxD.shape[1:3] != response_mask_BxL.shape:
            raise ValueError(
                f"activations '{kind}' have shape {acts_NxBxLxD.shape}; expected "
                f"[layers, {response_mask_BxL.shape[0]}, {response_mask_BxL.shape[1]}, D] "
                "matching response_mask_BxL (add a leading layer axis for one layer)."
            )
        per_kind.append(jnp.mean(_layer_masks(acts_NxBxLxD, keep_BxL, eps), axis=0))
    return jax.lax.stop_gradient(jnp.mean(jnp.stack(per_kind), axis=0))
