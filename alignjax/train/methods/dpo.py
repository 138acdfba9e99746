"""The DPO family (TRL's loss names; several summed with `loss.weights`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from alignjax.data import ops as data_ops
from alignjax.losses.dpo_combined import LOSSES, DPOConfig, dpo_loss, implicit_rewards, init_dpo_state
from alignjax.models import decoder
from alignjax.train.methods.common import (
    log_sum_sq_from_hidden,
    logps_from_hidden,
    pair_logps_from_tokens,
    pair_outputs,
    policy_decoder,
    reference_pair_logps,
)
from alignjax.train.methods.registry import Method, Objective


def dpo_config(loss) -> DPOConfig:
    """The loss types of `loss:` under its DPO options (the section is a `DPOOptions`)."""
    weights = tuple(loss.weights) if loss.weights else None
    return DPOConfig.with_options(loss, loss.names, weights)


# DPOConfig fields whose `loss:` key is spelt differently; the others share TRL's name.
_KEYS = {"loss_type": "type", "loss_weights": "weights"}


def check(loss) -> None:
    """The DPO keys of `loss:` together, when the config loads (before any model or data)."""
    try:
        dpo = dpo_config(loss)
    except ValueError as e:
        message = str(e)
        for field, key in _KEYS.items():
            message = message.replace(f"DPOConfig.{field}", f"loss.{key}")
        raise ValueError(message.replace("DPOConfig.", "loss.")) from None
    if loss.reference == "precomputed" and dpo.needs_reference and dpo.ld_alpha is not None:
        raise ValueError(
            "loss.ld_alpha needs the reference's log-probs split at each pair's shared length; the "
            "`alignjax precompute-ref` table holds whole-response sums: use loss.reference: model"
        )
    if loss.sync_ref_model and not dpo.needs_reference:
        raise ValueError(
            f"loss.sync_ref_model: loss.type={loss.type!r}"
            + (" with loss.reference_free" if dpo.reference_free else "")
            + " uses no reference model, so there is none to move"
        )


def policy_pair_logps(decoder_params, cfg, loss, batch, dpo: DPOConfig):
    """The policy's pair sums, LD-DPO's when `ld_alpha` is set, with WPO's aligned sums when
    `use_weighting` (one more pass over the vocabulary, without gradient)."""
    hidden_BxLxD = decoder.apply(
        decoder_params, cfg, batch.tokens_BxL, batch.positions_BxL, batch.segment_ids_BxL
    )
    logps_BxL = logps_from_hidden(decoder_params, cfg, loss, hidden_BxLxD, batch.tokens_BxL)
    pairs = pair_logps_from_tokens(logps_BxL, batch, dpo.ld_alpha)
    if not dpo.use_weighting:
        return pairs
    log_sum_sq_BxL = log_sum_sq_from_hidden(decoder_params, cfg, loss, hidden_BxLxD)
    aligned_c_P, aligned_r_P = data_ops.pair_sums(jax.lax.stop_gradient(logps_BxL) - log_sum_sq_BxL, batch)
    return pairs._replace(chosen_aligned_logps_B=aligned_c_P, rejected_aligned_logps_B=aligned_r_P)


def build(cfg, loss, sizes) -> Objective:
    dpo = dpo_config(loss)
    precomputed = loss.reference == "precomputed"

    def fn(params, ref_params, batch, state, rng):
        decoder_params = policy_decoder(params, ref_params, rng)
        policy = policy_pair_logps(decoder_params, cfg, loss, batch, dpo)
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
            ref = reference_pair_logps(policy, decoder_params, ref_params, cfg, loss, batch, dpo.ld_alpha)
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
    check=check,
)
