"""Reward-model training: the Bradley-Terry loss over scalar sequence rewards (TRL's RewardTrainer).

loss = mean_pairs[-log sigmoid(r_chosen - r_rejected - margin)]
       + center_rewards_coefficient * mean_pairs[(r_chosen + r_rejected)^2]

The centring term (Eisenstein et al., 2023) pins the rewards' mean near 0, which the
Bradley-Terry term leaves free. Means run over valid pairs only: a partial last batch
fills its unused pair slots with padding that must not count.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def bradley_terry_loss(
    chosen_rewards_P: jax.Array,
    rejected_rewards_P: jax.Array,
    valid_P: jax.Array,
    margin_P: jax.Array | None = None,
    center_rewards_coefficient: float | None = None,
):
    """(loss, metrics) over P pair slots; metrics carry TRL's names."""
    chosen_P = chosen_rewards_P.astype(jnp.float32)
    rejected_P = rejected_rewards_P.astype(jnp.float32)
    valid_P = valid_P.astype(jnp.float32)
    count = jnp.maximum(valid_P.sum(), 1.0)

    def mean(values_P):
        return jnp.sum(values_P * valid_P) / count

    diff_P = chosen_P - rejected_P
    shifted_P = diff_P if margin_P is None else diff_P - margin_P.astype(jnp.float32)
    loss = mean(-jax.nn.log_sigmoid(shifted_P))
    if center_rewards_coefficient is not None:
        loss = loss + center_rewards_coefficient * mean((chosen_P + rejected_P) ** 2)
    is_valid_P = valid_P > 0
    any_valid = jnp.any(is_valid_P)
    both_2xP = jnp.stack([chosen_P, rejected_P])
    metrics = jax.lax.stop_gradient(
        {
            "accuracy": mean((chosen_P > rejected_P).astype(jnp.float32)),
            "margin": mean(diff_P),
            "mean_reward": mean(chosen_P + rejected_P) / 2.0,
            # 0 for a batch of padding only, not an infinity that would poison a mean of batches.
            "min_reward": jnp.where(any_valid, jnp.min(jnp.where(is_valid_P[None], both_2xP, jnp.inf)), 0.0),
            "max_reward": jnp.where(any_valid, jnp.max(jnp.where(is_valid_P[None], both_2xP, -jnp.inf)), 0.0),
            "rewards/chosen": mean(chosen_P),
            "rewards/rejected": mean(rejected_P),
        }
    )
    return loss, metrics
