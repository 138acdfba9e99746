"""P-DPO: sigmoid DPO with user soft tokens, mixed with the generic user (docs/methods.md, section 3).

    L = alpha * mean_{pairs with user != 0} l(e_user) + (1 - alpha) * mean_{all pairs} l(e_0)

The policy runs twice per pair (once with the pair's user tokens, once with the
generic user's); the reference runs once, with no user tokens. This function takes
the resulting per-sequence log-probs, so it stays a pure function of arrays.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.nn import log_sigmoid

from alignjax.losses.sequence import as_float
from alignjax.models.user_model import clamp_user_ids


class PersonalizedLogps(NamedTuple):
    """Summed response log-probs, [B].

    user_*: policy with the pair's user tokens. generic_*: policy with user 0's tokens.
    ref_*: reference model, no user tokens. user_ids_B: raw ids (unseen ids -> 0).
    """

    user_ids_B: jax.Array
    user_chosen_logps_B: jax.Array
    user_rejected_logps_B: jax.Array
    generic_chosen_logps_B: jax.Array
    generic_rejected_logps_B: jax.Array
    ref_chosen_logps_B: jax.Array
    ref_rejected_logps_B: jax.Array


@dataclasses.dataclass(frozen=True)
class PDPOConfig:
    """alpha: the weight of the users' own term against the generic user's; a training
    config's `loss.pdpo` section holds it. The DPO temperature and label smoothing are the
    DPO family's, arguments of `pdpo_loss`."""

    alpha: float = 0.5

    def __post_init__(self):
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"loss.pdpo.alpha={self.alpha} must be in [0, 1]")


def _rewards(chosen_B, rejected_B, ref_chosen_B, ref_rejected_B, beta):
    return (
        beta * (as_float(chosen_B) - as_float(ref_chosen_B)),
        beta * (as_float(rejected_B) - as_float(ref_rejected_B)),
    )


def _sigmoid_dpo(chosen_rewards_B, rejected_rewards_B, e):
    z = chosen_rewards_B - rejected_rewards_B
    return -(1.0 - e) * log_sigmoid(z) - e * log_sigmoid(-z)


def pdpo_loss(
    batch: PersonalizedLogps, config: PDPOConfig, *, num_users: int, beta: float, label_smoothing: float = 0.0
):
    """(loss, metrics) at DPO temperature `beta` with cDPO's `label_smoothing`; `num_users`
    counts the generic user 0 (sizes the per-user metrics). Metrics use the user-token pass
    for TRL's rewards/* names, plus generic/rewards/accuracies, loss/user, loss/generic, and
    per_user/accuracies, per_user/counts: [num_users] arrays (segment sums over user ids, so
    they jit; a user absent from the batch has count 0 and accuracy 0).
    """
    if num_users < 1 or beta <= 0 or not 0.0 <= label_smoothing < 0.5:
        raise ValueError(
            f"pdpo_loss needs num_users >= 1, beta > 0, 0 <= label_smoothing < 0.5; got "
            f"num_users={num_users}, beta={beta}, label_smoothing={label_smoothing}"
        )
    ids_B = clamp_user_ids(batch.user_ids_B, num_users)
    user_w, user_l = _rewards(
        batch.user_chosen_logps_B,
        batch.user_rejected_logps_B,
        batch.ref_chosen_logps_B,
        batch.ref_rejected_logps_B,
        beta,
    )
    gen_w, gen_l = _rewards(
        batch.generic_chosen_logps_B,
        batch.generic_rejected_logps_B,
        batch.ref_chosen_logps_B,
        batch.ref_rejected_logps_B,
        beta,
    )
    user_loss_B = _sigmoid_dpo(user_w, user_l, label_smoothing)
    generic_loss_B = _sigmoid_dpo(gen_w, gen_l, label_smoothing)

    personal_B = ids_B != 0
    # A batch with only generic-user pairs has no personal term (0, not 0/0).
    num_personal = jnp.maximum(jnp.sum(personal_B), 1).astype(user_loss_B.dtype)
    user_term = jnp.sum(jnp.where(personal_B, user_loss_B, 0.0)) / num_personal
    generic_term = jnp.mean(generic_loss_B)
    loss = config.alpha * user_term + (1.0 - config.alpha) * generic_term

    sg = jax.lax.stop_gradient
    user_w, user_l, gen_w, gen_l = sg(user_w), sg(user_l), sg(gen_w), sg(gen_l)
    correct_B = (user_w > user_l).astype(loss.dtype)
    counts_U = jax.ops.segment_sum(jnp.ones_like(correct_B), ids_B, num_users)
    correct_U = jax.ops.segment_sum(correct_B, ids_B, num_users)
    metrics = {
        "rewards/chosen": jnp.mean(user_w),
        "rewards/rejected": jnp.mean(user_l),
        "rewards/accuracies": jnp.mean(correct_B),
        "rewards/margins": jnp.mean(user_w - user_l),
        "logps/chosen": jnp.mean(sg(as_float(batch.user_chosen_logps_B))),
        "logps/rejected": jnp.mean(sg(as_float(batch.user_rejected_logps_B))),
        "generic/rewards/accuracies": jnp.mean((gen_w > gen_l).astype(loss.dtype)),
        "loss/user": sg(user_term),
        "loss/generic": sg(generic_term),
        "per_user/accuracies": correct_U / jnp.maximum(counts_U, 1.0),
        "per_user/counts": counts_U,
    }
    return loss, metrics
