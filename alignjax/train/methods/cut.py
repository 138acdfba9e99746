"""CUT (docs/methods.md, section 5): contrastive unlikelihood from natural-language judgments.

Offline: `data.train` holds judged responses. Online (`loss.cut.judge` set), the policy
answers prompts and a judge critiques them: that method (`online_cut`) shares this config
section.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from alignjax.losses.cut import CUTConfig, cut_loss
from alignjax.online.online_cut import OnlineSampling
from alignjax.train.methods.common import forward_logps, policy_decoder
from alignjax.train.methods.registry import Method, Objective


@dataclasses.dataclass(frozen=True)
class CUTSection(CUTConfig):
    """`loss.cut`: the loss's keys (`CUTConfig`), the records' and the online mode's."""

    # A record with a judgment is still satisfactory if its score is at least this.
    positive_score: float | None = None
    # Online mode: data.train holds prompts; the policy answers and this judge critiques.
    judge: dict[str, Any] | None = None
    sampling: OnlineSampling = dataclasses.field(default_factory=OnlineSampling)


def data_options(loss) -> dict[str, Any]:
    return {"cut_positive_score": loss.section("cut").positive_score}


def build(cfg, loss, sizes) -> Objective:
    section = loss.section("cut")

    def fn(params, ref_params, batch, state, rng):
        logps_BxL = forward_logps(policy_decoder(params, ref_params, rng), cfg, loss, batch)
        e = batch.is_satisfactory_E.shape[0]
        mask_BxL = batch.loss_mask_BxL * (batch.segment_ids_BxL > 0)
        valid_E = batch.example_valid_E.astype(bool)
        response_ExL = mask_BxL[:e] * valid_E[:, None]
        is_negative_E = (1 - batch.is_satisfactory_E) * valid_E
        value, metrics = cut_loss(logps_BxL[:e], logps_BxL[e:], response_ExL, is_negative_E, section)
        return value, (metrics, state, {})

    return Objective(fn, needs_reference=False)


METHOD = Method(
    name="cut",
    accepts=lambda loss: loss.names == ("cut",),
    build=build,
    section=CUTSection,
    data_options=data_options,
)
