"""KTO (TRL's KTOTrainer): unpaired desirable / undesirable completions (`data.record_type:
unpaired`), `loss.type: kto` with `loss.kto` (`KTOConfig`: TRL's KTOConfig names; its
`beta` is `loss.beta`, shared with DPO): `loss_type` kto or apo_zero_unpaired.

The reference is the DPO family's (frozen starting model, or a LoRA policy's base). The
KL reference point comes from each batch's mismatched rows (`UnpairedBatch`), which the
policy and the reference score without gradient, as TRL scores them under `no_grad`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from alignjax.data.record_types.unpaired import UnpairedBatch
from alignjax.losses.kto import KTOConfig, kl_reference_point, kto_loss
from alignjax.losses.sequence import sequence_logps
from alignjax.train.methods.common import (
    forward_logps,
    policy_decoder,
    reference_or_own,
    require_positive_beta,
)
from alignjax.train.methods.registry import Method, Objective


def _rows(batch: UnpairedBatch, start: int, stop: int) -> UnpairedBatch:
    """The batch's rows [start, stop) (its per-example arrays unchanged)."""
    return dataclasses.replace(
        batch,
        **{
            f.name: getattr(batch, f.name)[start:stop]
            for f in dataclasses.fields(batch)
            if f.name.endswith("_BxL")
        },
    )


def _completion_sums(decoder_params, cfg, loss, rows: UnpairedBatch) -> jax.Array:
    """Summed log-probs of each row's completion tokens (one sequence per row)."""
    logps_BxL = forward_logps(decoder_params, cfg, loss, rows)
    return sequence_logps(logps_BxL, rows.loss_mask_BxL * (rows.segment_ids_BxL > 0))[0]


def build(cfg, loss, sizes) -> Objective:
    kto = loss.section("kto")

    def fn(params, ref_params, batch, state, rng):
        if not isinstance(batch, UnpairedBatch):
            raise ValueError(
                f"loss.type=kto trains on unpaired records (prompt, completion, label): set "
                f"data.record_type: unpaired (the batch is a {type(batch).__name__})"
            )
        e = batch.desirable_E.shape[0]
        decoder_params = policy_decoder(params, ref_params, rng)

        def scored(rows):
            own_E = _completion_sums(decoder_params, cfg, loss, rows)
            ref_E = reference_or_own(
                own_E,
                lambda: _completion_sums(ref_params, cfg, loss, rows),
                decoder_params,
                ref_params,
                cfg,
            )
            return own_E, ref_E

        logps_E, ref_logps_E = scored(_rows(batch, 0, e))
        kl = jnp.zeros((), jnp.float32)
        if kto.uses_kl:
            kl_logps_E, ref_kl_logps_E = scored(_rows(batch, e, 2 * e))
            kl = kl_reference_point(jax.lax.stop_gradient(kl_logps_E), ref_kl_logps_E, batch.example_valid_E)
        value, metrics = kto_loss(
            logps_E, ref_logps_E, batch.desirable_E, batch.example_valid_E, kl, kto, loss.beta
        )
        return value, (metrics, state, {})

    return Objective(fn, needs_reference=True)


METHOD = Method(
    name="kto",
    accepts=lambda loss: loss.names == ("kto",),
    build=build,
    section=KTOConfig,
    no_precomputed_reference="the KL reference point needs the reference on each batch's mismatched pairs",
    check=require_positive_beta,
)
