"""SparsePO learned token masks: a small head on the reference's per-layer hidden states.

Per layer l:  s_l = Dropout(ReLU(w_l . LN(h_l) + b_l))   (one LayerNorm shared by all layers)
Mask:         m   = Dropout(ReLU(sum_l c_l s_l))          (c has no bias)

ReLU gives exact zeros, hence sparsity. The head is trained only through the SparsePO
loss, with its own weight decay (0.01) and dropout (0.01): `mask_head_optimizer`
routes its parameters to their own optax transform.

Initialisation puts every mask close to 1 (w_l ~ N(0, (init_scale/sqrt(D))^2) so
w_l . LN(h) has std init_scale; b_l = 1; c_l = 1/N): training starts from token-level
DPO (TDPO) rather than from random, possibly dead (all-zero, gradient-free) masks.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

MASK_HEAD_KEY = "mask_head"


class _MaskBranch(nn.Module):
    """One mask: shared LayerNorm, per-layer scorer, layer mixer."""

    dropout_rate: float
    init_scale: float

    @nn.compact
    def __call__(self, hidden_NxBxLxD: jax.Array, deterministic: bool) -> jax.Array:
        n, d = hidden_NxBxLxD.shape[0], hidden_NxBxLxD.shape[-1]
        normed_NxBxLxD = nn.LayerNorm(name="norm", dtype=jnp.float32)(hidden_NxBxLxD.astype(jnp.float32))
        w_NxD = self.param(
            "layer_w", nn.initializers.normal(self.init_scale / math.sqrt(d)), (n, d), jnp.float32
        )
        b_N = self.param("layer_b", nn.initializers.ones, (n,), jnp.float32)
        c_N = self.param("layer_mix", nn.initializers.constant(1.0 / n), (n,), jnp.float32)
        s_NxBxL = jax.nn.relu(jnp.einsum("nbld,nd->nbl", normed_NxBxLxD, w_NxD) + b_N[:, None, None])
        s_NxBxL = nn.Dropout(self.dropout_rate)(s_NxBxL, deterministic=deterministic)
        m_BxL = jax.nn.relu(jnp.einsum("nbl,n->bl", s_NxBxL, c_N))
        return nn.Dropout(self.dropout_rate)(m_BxL, deterministic=deterministic)


class MaskHead(nn.Module):
    """Learned SparsePO masks from reference hidden states [N layers, B, L, D].

    mode "common": one branch, m_u = m_d. "independent": two branches.
    Returns (m_u_BxL, m_d_BxL), float32, >= 0. The hidden states are wrapped in
    stop_gradient: the reference model is never trained through its masks.
    Needs a "dropout" rng unless deterministic=True.
    """

    mode: str = "common"
    dropout_rate: float = 0.01
    init_scale: float = 0.1

    @nn.compact
    def __call__(self, hidden_NxBxLxD: jax.Array, *, deterministic: bool = False):
        if self.mode not in ("common", "independent"):
            raise ValueError(f"MaskHead.mode={self.mode!r}; use 'common' or 'independent'.")
        if hidden_NxBxLxD.ndim != 4:
            raise ValueError(
                f"MaskHead expects hidden states [layers, B, L, D], got shape {hidden_NxBxLxD.shape}."
            )
        hidden_NxBxLxD = jax.lax.stop_gradient(hidden_NxBxLxD)
        reward_BxL = _MaskBranch(self.dropout_rate, self.init_scale, name="reward")(
            hidden_NxBxLxD, deterministic
        )
        if self.mode == "common":
            return reward_BxL, reward_BxL
        kl_BxL = _MaskBranch(self.dropout_rate, self.init_scale, name="kl")(hidden_NxBxLxD, deterministic)
        return reward_BxL, kl_BxL


def _path_has(path, key: str) -> bool:
    return any(getattr(entry, "key", getattr(entry, "name", None)) == key for entry in path)


def mask_head_labels(params: Any, key: str = MASK_HEAD_KEY) -> Any:
    """Label every leaf "mask_head" if it sits under a `key` entry, else "model"."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: MASK_HEAD_KEY if _path_has(path, key) else "model", params
    )


def mask_head_optimizer(
    model_tx: optax.GradientTransformation,
    learning_rate,
    weight_decay: float = 0.01,
    key: str = MASK_HEAD_KEY,
    mask_head_tx: optax.GradientTransformation | None = None,
) -> optax.GradientTransformation:
    """model_tx for the model, AdamW(learning_rate, weight_decay) for the mask head.

    Put the head's parameters under `key` in the trainable pytree, e.g.
    {"model": model_params, "mask_head": head_params}. Pass mask_head_tx to override
    the head's transform entirely.
    """
    head_tx = mask_head_tx or optax.adamw(learning_rate, weight_decay=weight_decay)
    return optax.multi_transform(
        {"model": model_tx, MASK_HEAD_KEY: head_tx}, lambda params: mask_head_labels(params, key)
    )
