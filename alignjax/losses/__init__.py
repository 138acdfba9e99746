"""Objectives: chunked log-probs, the DPO family, SparsePO, P-DPO, CUT and SFT.

All are pure functions of arrays, safe under jit; configs are frozen dataclasses
(hashable, so they can be static arguments). The compiled-memory report for
`alignjax bench` is `alignjax.losses.memory.logps_memory_report` (or run
`python -m alignjax.losses.memory`).
"""

from alignjax.losses.activation_masks import activation_mask
from alignjax.losses.cut import CUTConfig, cut_loss, flag_inappropriate, response_logps, split_views
from alignjax.losses.dpo_combined import LOSSES, DPOConfig, DPOOptions, LossSpec, dpo_loss, init_dpo_state
from alignjax.losses.dpo_pair_losses import PairLogps, RunningMean
from alignjax.losses.logps import token_kl, token_logps
from alignjax.losses.personalized import PDPOConfig, PersonalizedLogps, pdpo_loss
from alignjax.losses.sequence import masked_mean, sequence_logps
from alignjax.losses.sft import sft_loss
from alignjax.losses.token_weighted import (
    SparsePOConfig,
    TokenPairLogps,
    TokenWeights,
    shared_weights,
    sparsepo_loss,
)

__all__ = [
    "CUTConfig",
    "DPOConfig",
    "DPOOptions",
    "LOSSES",
    "LossSpec",
    "PDPOConfig",
    "PairLogps",
    "PersonalizedLogps",
    "RunningMean",
    "SparsePOConfig",
    "TokenPairLogps",
    "TokenWeights",
    "activation_mask",
    "cut_loss",
    "dpo_loss",
    "flag_inappropriate",
    "init_dpo_state",
    "masked_mean",
    "pdpo_loss",
    "response_logps",
    "sequence_logps",
    "sft_loss",
    "shared_weights",
    "sparsepo_loss",
    "split_views",
    "token_kl",
    "token_logps",
]
