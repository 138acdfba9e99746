"""The DPO family (TRL's loss names; several summed with `loss.weights`)."""

from __future__ import annotations

import jax.numpy as jnp

from alignjax.losses.dpo import LOSSES, DPOConfig, dpo_loss, implicit_rewards, init_dpo_state
from alignjax.train.methods.common import pair_logps, pair_outputs, policy_decoder, reference_pair_logps
from alignjax.train.methods.registry import Method, Objective


def dpo_config(loss) -> DPOConfig:
    return DPOConfig(
        loss_type=loss.names,
        loss_weights=tuple(loss.weights) if loss.weights else None,
        beta=loss.beta,
        label_smoothing=loss.label_smoothing,
        discopop_tau=loss.discopop_tau,
        simpo_beta=loss.simpo_beta,
        simpo_gamma=loss.simpo_gamma,
        orpo_lambda=loss.orpo_lambda,
    )


def build(cfg, loss, sizes) -> Objective:
    dpo = dpo_config(loss)
    precomputed = loss.reference == "precomputed"

    def fn(params, ref_params, batch, state, rng):
        decoder_params = policy_decoder(params, ref_params)
        policy = pair_logps(decoder_params, cfg, loss, batch)
        if dpo.needs_reference and precomputed:
            if batch.ref_chosen_logps_P is None or batch.ref_rejected_logps_P is None:
                raise ValueError(
                    "loss.reference=precomputed: the batch carries no reference log-probs "
                    "(the trainer attaches them from the `alignjax precompute-ref` table)"
                )
            policy = policy._replace(
                ref_chosen_logps_B=batch.ref_chosen_logps_P, ref_rejected_logps_B=batch.ref_rejected_logps_P
            )
        elif dpo.needs_reference:
            ref = reference_pair_logps(policy, decoder_params, ref_params, cfg, loss, batch)
            policy = policy._replace(
                ref_chosen_logps_B=ref.chosen_logps_B, ref_rejected_logps_B=ref.rejected_logps_B
            )
        valid_P = batch.pair_valid_P.astype(jnp.float32)
        weight_P = valid_P if batch.pair_weight_P is None else valid_P * batch.pair_weight_P
        value, metrics, state = dpo_loss(policy, dpo, state, valid_B=weight_P)
        chosen_r_P, rejected_r_P = implicit_rewards(policy, dpo)
        per_pair = pair_outputs(metrics, chosen_r_P - rejected_r_P, batch, sizes["num_conditions"])
        return value, (metrics, state, per_pair)

    return Objective(fn, dpo.needs_reference, lambda: init_dpo_state(dpo))


METHOD = Method(
    name="dpo",
    accepts=lambda loss: all(name in LOSSES for name in loss.names),
    build=build,
    reads_reference_table=lambda loss: dpo_config(loss).needs_reference,
)
