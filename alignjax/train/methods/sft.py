"""Supervised fine-tuning: mean NLL of the response tokens."""

from __future__ import annotations

from alignjax.losses.sft import sft_loss
from alignjax.train.methods.common import forward_logps, policy_decoder
from alignjax.train.methods.registry import Method, Objective


def build(cfg, loss, sizes) -> Objective:
    def fn(params, ref_params, batch, state, rng):
        logps_BxL = forward_logps(policy_decoder(params, ref_params, rng), cfg, loss, batch)
        value, metrics = sft_loss(logps_BxL, batch.loss_mask_BxL * (batch.segment_ids_BxL > 0))
        return value, (metrics, state, {})

    return Objective(fn, needs_reference=False)


METHOD = Method(
    name="sft",
    accepts=lambda loss: loss.names == ("sft",),
    build=build,
)
