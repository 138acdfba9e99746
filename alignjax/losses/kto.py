"""KTO: unpaired desirable / undesirable completions against a reference point (TRL's KTOTrainer).

Per example, r = logp_policy - logp_reference (summed over the completion). With the
reference point z0 = max(0, mean over the batch's mismatched pairs of the same log-ratio),
detached:
  kto:               desirable  1 - sigmoid(beta (r - z0)),  undesirable  1 - sigmoid(beta (z0 - r))
  apo_zero_unpaired: desirable  1 - sigmoid(beta r),         undesirable  sigmoid(beta r)  (no z0)
The loss is the mean over the batch's examples of the losses weighted by
`desirable_weight` / `undesirable_weight` (a sum over the weighted losses divided by the
number of examples, not by the sum of the weights, as TRL takes it).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from alignjax.losses.sequence import as_float

KTO_LOSS_TYPES = ("kto", "apo_zero_unpaired")


@dataclasses.dataclass(frozen=True)
class KTOConfig:
    """KTO's options in TRL's KTOConfig names: a training config's `loss.kto` section. Its
    beta is the DPO family's (`loss.beta`), an argument of `kto_loss`."""

    loss_type: str = "kto"
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0

    def __post_init__(self):
        if self.loss_type not in KTO_LOSS_TYPES:
            raise ValueError(f"loss.kto.loss_type={self.loss_type!r}: choose one of {KTO_LOSS_TYPES}")
        if self.desirable_weight < 0 or self.undesirable_weight < 0:
            raise ValueError(
                f"loss.kto.desirable_weight={self.desirable_weight} and undesirable_weight="
                f"{self.undesirable_weight} must be >= 0"
            )

    @property
    def uses_kl(self) -> bool:
        """Whether the loss reads the reference point (apo_zero_unpaired compares with 0)."""
        return self.loss_type == "kto"


def kl_reference_point(kl_logps_E, ref_kl_logps_E, valid_E) -> jax.Array:
    """z0: the mean log-ratio of the mismatched (prompt, completion) pairs, detached and at
    least 0. Only valid examples count."""
    valid_E = valid_E.astype(bool)
    ratio_E = as_float(kl_logps_E) - as_float(ref_kl_logps_E)
    count = jnp.maximum(jnp.sum(valid_E), 1).astype(ratio_E.dtype)
    mean = jnp.sum(jnp.where(valid_E, ratio_E, 0.0)) / count
    return jnp.maximum(jax.lax.stop_gradient(mean), 0.0)


def kto_loss(logps_E, ref_logps_E, desirable_E, valid_E, kl, config: KTOConfig, beta: float):
    """(loss, metrics) from summed completion log-probs of E examples, at temperature `beta`.

    `desirable_E`: 1 for a desirable completion (label true), 0 otherwise; `valid_E`: 0 for
    padding slots, which count nowhere. `kl`: the reference point (`kl_reference_point`;
    ignored by apo_zero_unpaired). Metrics are TRL's: means over each label's examples
    (0 when a label has none in the batch), `rewards/margins` the difference of the
    two means, `kl` the reference point; `rewards/accuracies` (alignjax's, unpaired) the
    fraction of the batch's (desirable, undesirable) example pairs whose desirable reward
    is the higher (0 when the batch lacks a label).
    """
    logps_E, ref_logps_E = as_float(logps_E), as_float(ref_logps_E)
    valid_E = valid_E.astype(bool)
    chosen_E = valid_E & desirable_E.astype(bool)
    rejected_E = valid_E & ~desirable_E.astype(bool)
    logratio_E = logps_E - ref_logps_E
    z0 = kl if config.uses_kl else jnp.zeros((), logratio_E.dtype)
    if config.loss_type == "kto":
        chosen_loss_E = 1.0 - jax.nn.sigmoid(beta * (logratio_E - z0))
        rejected_loss_E = 1.0 - jax.nn.sigmoid(beta * (z0 - logratio_E))
    else:
        chosen_loss_E = 1.0 - jax.nn.sigmoid(beta * logratio_E)
        rejected_loss_E = jax.nn.sigmoid(beta * logratio_E)
    weighted_E = jnp.where(
        chosen_E,
        config.desirable_weight * chosen_loss_E,
        jnp.where(rejected_E, config.undesirable_weight * rejected_loss_E, 0.0),
    )
    n_examples = jnp.maximum(jnp.sum(valid_E), 1).astype(logratio_E.dtype)
    loss = jnp.sum(weighted_E) / n_examples

    rewards_E = jax.lax.stop_gradient(beta * logratio_E)
    plain_logps_E = jax.lax.stop_gradient(logps_E)

    def mean_over(values_E, keep_E):
        return jnp.sum(jnp.where(keep_E, values_E, 0.0)) / jnp.maximum(jnp.sum(keep_E), 1).astype(
            values_E.dtype
        )

    # Every (desirable, undesirable) pair of the batch, as DPO's accuracy counts its pairs.
    above_ExE = (rewards_E[:, None] > rewards_E[None, :]) & chosen_E[:, None] & rejected_E[None, :]
    n_pairs = jnp.maximum(jnp.sum(chosen_E) * jnp.sum(rejected_E), 1).astype(logratio_E.dtype)
    metrics = {
        "kl": jnp.asarray(z0, logratio_E.dtype),
        "rewards/chosen": mean_over(rewards_E, chosen_E),
        "rewards/rejected": mean_over(rewards_E, rejected_E),
        "logps/chosen": mean_over(plain_logps_E, chosen_E),
        "logps/rejected": mean_over(plain_logps_E, rejected_E),
        "rewards/accuracies": jnp.sum(above_ExE).astype(logratio_E.dtype) / n_pairs,
    }
    metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
    return loss, metrics
