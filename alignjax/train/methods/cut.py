"""CUT (docs/methods.md, section 5): contrastive unlikelihood from natural-language judgments.

Offline: `data.train` holds judged responses. Online (`loss.cut.judge` set), the policy
answers prompts and a judge critiques them: that method is registered by
`alignjax.online`, and shares this config section.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from alignjax.losses.cut import CUTConfig, cut_loss
from alignjax.train.methods.common import forward_logps, policy_decoder
from alignjax.train.methods.registry import Method, Objective


@dataclasses.dataclass(frozen=True)
class OnlineSampling:
    """How the policy samples its answers online (CUT with a judge)."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0


@dataclasses.dataclass(frozen=True)
class CUTSection:
    """`loss.cut`."""

    lam: float = 1.1
    a: float = 0.5
    g: float = 0.0
    detection: str = "ratio"  # ratio, or the paper's difference test
    form: str = "paper"  # paper (L1 + L2) or code (the authors' (NLL + UL) / 2)
    # Online mode: data.train holds prompts; the policy answers and this judge critiques.
    judge: dict[str, Any] | None = None
    sampling: OnlineSampling = dataclasses.field(default_factory=OnlineSampling)


def build(cfg, loss, sizes) -> Objective:
    section = loss.section("cut")
    config = CUTConfig(
        lam=section.lam, a=section.a, g=section.g, detection=section.detection, form=section.form
    )

    def fn(params, ref_params, batch, state, rng):
        logps_BxL = forward_logps(policy_decoder(params, ref_params, rng), cfg, loss, batch)
        e = batch.is_satisfactory_E.shape[0]
        mask_BxL = batch.loss_mask_BxL * (batch.segment_ids_BxL > 0)
        valid_E = batch.example_valid_E.astype(bool)
        response_ExL = mask_BxL[:e] * valid_E[:, None]
        is_negative_E = (1 - batch.is_satisfactory_E) * valid_E
        value, metrics = cut_loss(logps_BxL[:e], logps_BxL[e:], response_ExL, is_negative_E, config)
        return value, (metrics, state, {})

    return Objective(fn, needs_reference=False)


METHOD = Method(name="cut", accepts=lambda loss: loss.names == ("cut",), build=build, section=CUTSection)
