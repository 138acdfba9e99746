"""SparsePO: token-weighted DPO with per-token reward and KL weights (docs/methods.md, section 2).

    u     = sum_t m_u(y_w) d_t(y_w) - sum_t m_u(y_l) d_t(y_l)
    delta = sum_t m_d(y_l) KL_t(y_l) - sum_t m_d(y_w) KL_t(y_w)
    L     = mean[-logsig(beta (u - delta)) + lam_u |m_u|_1 + lam_d |m_d|_1]

All-ones weights give token-level DPO (TDPO-1); without KL inputs delta is 0 and
the loss is sigmoid DPO. Weights come from the data (`TokenWeights` as given),
from reference activations (`activation_masks.activation_mask`), or from the
learned `alignjax.models.mask_head.MaskHead`; for learned masks gradients flow
through the weights into the head, so do not stop_gradient them.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.nn import log_sigmoid

from alignjax.losses.sequence import as_float


class TokenPairLogps(NamedTuple):
    """Per-token inputs for chosen (…_chosen) and rejected (…_rejected) responses.

    *_logps / ref_*_logps: policy and reference log p(y_t), [B, L] (chosen and
      rejected may have different L).
    *_mask: 1 on response tokens, 0 on prompt and padding.
    *_kl: token KL(pi_ref || pi_theta) from `logps.token_kl`, or None for no KL term.
    """

    chosen_logps_BxL: jax.Array
    rejected_logps_BxL: jax.Array
    ref_chosen_logps_BxL: jax.Array
    ref_rejected_logps_BxL: jax.Array
    chosen_mask_BxL: jax.Array
    rejected_mask_BxL: jax.Array
    chosen_kl_BxL: jax.Array | None = None
    rejected_kl_BxL: jax.Array | None = None


class TokenWeights(NamedTuple):
    """m_u (reward weights) and m_d (KL weights) per token, >= 0, shaped like the logps."""

    reward_chosen_BxL: jax.Array
    reward_rejected_BxL: jax.Array
    kl_chosen_BxL: jax.Array
    kl_rejected_BxL: jax.Array


def shared_weights(chosen_BxL: jax.Array, rejected_BxL: jax.Array) -> TokenWeights:
    """One mask for both u and delta (MaPO masks, or the mask head's "common" mode)."""
    return TokenWeights(chosen_BxL, rejected_BxL, chosen_BxL, rejected_BxL)


@dataclasses.dataclass(frozen=True)
class SparsePOConfig:
    """lam_u, lam_d: L1 weights on m_u and m_d (sparsity); a training config's `loss.sparsepo`
    section holds them. The temperature beta is the DPO family's, an argument of `sparsepo_loss`."""

    lam_u: float = 0.0
    lam_d: float = 0.0

    def __post_init__(self):
        if self.lam_u < 0 or self.lam_d < 0:
            raise ValueError(f"loss.sparsepo.lam_u={self.lam_u} and lam_d={self.lam_d} must be >= 0")


def _masked_sum(x_BxL, mask_BxL):
    return jnp.sum(jnp.where(mask_BxL.astype(bool), as_float(x_BxL), 0.0), axis=-1)


def _mask_stats(chosen_BxL, rejected_BxL, chosen_mask_BxL, rejected_mask_BxL):
    """(fraction of exact zeros, mean weight) over all response tokens of both sides."""
    keep = jnp.concatenate([chosen_mask_BxL.reshape(-1), rejected_mask_BxL.reshape(-1)]).astype(bool)
    weights = jnp.concatenate([chosen_BxL.reshape(-1), rejected_BxL.reshape(-1)])
    weights = jax.lax.stop_gradient(as_float(weights))
    count = jnp.maximum(jnp.sum(keep), 1).astype(weights.dtype)
    zeros = jnp.sum(keep & (weights == 0.0)).astype(weights.dtype)
    return zeros / count, jnp.sum(jnp.where(keep, weights, 0.0)) / count


def sparsepo_loss(
    tokens: TokenPairLogps,
    weights: TokenWeights | None,
    config: SparsePOConfig = SparsePOConfig(),
    *,
    beta: float,
):
    """SparsePO loss and metrics at temperature `beta`; weights=None means all ones (TDPO-1).

    Returns (loss, metrics) with TRL's rewards/* names computed from the weighted
    rewards beta * sum_t m_u d_t, plus kl/chosen, kl/rejected (weighted sums),
    mask_u/sparsity, mask_u/mean, mask_d/sparsity, mask_d/mean.
    """
    if weights is None:
        ones_w = jnp.ones_like(as_float(tokens.chosen_logps_BxL))
        ones_l = jnp.ones_like(as_float(tokens.rejected_logps_BxL))
        weights = TokenWeights(ones_w, ones_l, ones_w, ones_l)
    if (tokens.chosen_kl_BxL is None) != (tokens.rejected_kl_BxL is None):
        raise ValueError("give both chosen_kl_BxL and rejected_kl_BxL, or neither.")
    mask_w, mask_l = tokens.chosen_mask_BxL, tokens.rejected_mask_BxL

    d_w = as_float(tokens.chosen_logps_BxL) - as_float(tokens.ref_chosen_logps_BxL)
    d_l = as_float(tokens.rejected_logps_BxL) - as_float(tokens.ref_rejected_logps_BxL)
    reward_w_B = _masked_sum(weights.reward_chosen_BxL * d_w, mask_w)
    reward_l_B = _masked_sum(weights.reward_rejected_BxL * d_l, mask_l)
    u_B = reward_w_B - reward_l_B
    if tokens.chosen_kl_BxL is None:
        kl_w_B = kl_l_B = jnp.zeros_like(u_B)
    else:
        kl_w_B = _masked_sum(weights.kl_chosen_BxL * as_float(tokens.chosen_kl_BxL), mask_w)
        kl_l_B = _masked_sum(weights.kl_rejected_BxL * as_float(tokens.rejected_kl_BxL), mask_l)
    delta_B = kl_l_B - kl_w_B

    l1_u_B = _masked_sum(jnp.abs(weights.reward_chosen_BxL), mask_w) + _masked_sum(
        jnp.abs(weights.reward_rejected_BxL), mask_l
    )
    l1_d_B = _masked_sum(jnp.abs(weights.kl_chosen_BxL), mask_w) + _masked_sum(
        jnp.abs(weights.kl_rejected_BxL), mask_l
    )
    per_pair_B = -log_sigmoid(beta * (u_B - delta_B)) + config.lam_u * l1_u_B + config.lam_d * l1_d_B
    loss = jnp.mean(per_pair_B)

    sg = jax.lax.stop_gradient
    chosen_rewards_B = sg(beta * reward_w_B)
    rejected_rewards_B = sg(beta * reward_l_B)
    u_sparsity, u_mean = _mask_stats(weights.reward_chosen_BxL, weights.reward_rejected_BxL, mask_w, mask_l)
    d_sparsity, d_mean = _mask_stats(weights.kl_chosen_BxL, weights.kl_rejected_BxL, mask_w, mask_l)
    metrics = {
        "rewards/chosen": jnp.mean(chosen_rewards_B),
        "rewards/rejected": jnp.mean(rejected_rewards_B),
        "rewards/accuracies": jnp.mean((chosen_rewards_B > rejected_rewards_B).astype(loss.dtype)),
        "rewards/margins": jnp.mean(chosen_rewards_B - rejected_rewards_B),
        "logps/chosen": jnp.mean(sg(_masked_sum(tokens.chosen_logps_BxL, mask_w))),
        "logps/rejected": jnp.mean(sg(_masked_sum(tokens.rejected_logps_BxL, mask_l))),
        "kl/chosen": jnp.mean(sg(kl_w_B)),
        "kl/rejected": jnp.mean(sg(kl_l_B)),
        "mask_u/sparsity": u_sparsity,
        "mask_u/mean": u_mean,
        "mask_d/sparsity": d_sparsity,
        "mask_d/mean": d_mean,
    }
    return loss, metrics
