"""A method written the way a user adds one: this module, plus one `register(METHOD)` line.

Length-weighted SFT: each example's mean token NLL, weighted by its response length to
the power `loss.length_weighted_sft.power` (0: every example counts the same; 1: every
token counts the same, i.e. plain SFT).
"""

import dataclasses

import jax.numpy as jnp

from alignjax.train.methods import Method, Objective
from alignjax.train.methods.common import DECODER, forward_logps


@dataclasses.dataclass(frozen=True)
class LengthWeightedSection:
    power: float = 0.5


def build(cfg, loss, sizes) -> Objective:
    power = loss.section("length_weighted_sft").power

    def fn(params, ref_params, batch, state, rng):
        logps_BxL = forward_logps(params[DECODER], cfg, loss, batch)
        mask_BxL = (batch.loss_mask_BxL * (batch.segment_ids_BxL > 0)).astype(jnp.float32)
        length_B = mask_BxL.sum(-1)
        nll_B = -(logps_BxL * mask_BxL).sum(-1) / jnp.maximum(length_B, 1.0)
        weight_B = jnp.where(length_B > 0, length_B**power, 0.0)
        value = (weight_B * nll_B).sum() / jnp.maximum(weight_B.sum(), 1e-9)
        return value, ({"toy/mean_length": length_B.mean()}, state, {})

    return Objective(fn, needs_reference=False)


METHOD = Method(
    name="length_weighted_sft",
    accepts=lambda loss: loss.names == ("length_weighted_sft",),
    build=build,
    section=LengthWeightedSection,
)
