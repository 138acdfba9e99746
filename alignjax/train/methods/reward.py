"""Reward-model training (TRL's RewardTrainer): `loss.type: reward`.

The model is the decoder plus a scalar score head (`models/score_head.py`), imported
from a `*ForSequenceClassification` checkpoint or, from a causal LM or a preset, drawn
new as transformers draws it. A sequence's reward is its score at the token that
transformers' sequence classifier reads: the rightmost token of the sequence whose id
is not config.json's pad_token_id (the sequence's last token without a pad id). The
loss is Bradley-Terry on each pair's rewards; there is no reference model. As
RewardTrainer filters its data, a pair whose chosen or rejected sequence is longer than
data.max_length is dropped rather than scored at a cut-off token (`over_length` below:
what data.over_length: auto means here).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from alignjax.data import ops as data_ops
from alignjax.losses.reward import bradley_terry_loss
from alignjax.models import decoder
from alignjax.models.score_head import SCORE_HEAD_KEY, init_score_head, token_scores_BxLxC
from alignjax.train.methods.common import pair_outputs, policy_decoder
from alignjax.train.methods.registry import Method, Objective


@dataclasses.dataclass(frozen=True)
class RewardSection:
    """`loss.reward`, in RewardConfig's names."""

    # Adds coef * mean((r_chosen + r_rejected)^2); null: off (TRL's default).
    center_rewards_coefficient: float | None = None
    # The preference records' field holding each pair's margin (RewardTrainer's `margin`
    # column: the loss wants r_chosen - r_rejected above it); null: no margins.
    margin_field: str | None = None
    # The std of a new score head (when the model is not a sequence classifier already):
    # config.json's initializer_range, 0.02 in every family here.
    initializer_range: float = 0.02


def pooled_token_mask_BxL(tokens_BxL, segment_ids_BxL, pad_token_id: int | None):
    """1 at the one token of each sequence (segment) whose hidden state is scored.

    transformers' rule per sequence: the rightmost token that is not the pad id, or the
    sequence's first token if every token is the pad id; without a pad id, its last token.
    Packed rows hold several sequences: the rule applies to each segment alone."""
    B, L = tokens_BxL.shape
    in_sequence_BxL = segment_ids_BxL > 0
    keep_BxL = in_sequence_BxL if pad_token_id is None else in_sequence_BxL & (tokens_BxL != pad_token_id)
    num_groups = B * (L + 1)  # (row, segment id): segment ids never exceed L
    group_BxL = jnp.arange(B)[:, None] * (L + 1) + segment_ids_BxL
    column_BxL = jnp.broadcast_to(jnp.arange(L)[None], (B, L))
    last_kept_G = jax.ops.segment_max(
        jnp.where(keep_BxL, column_BxL, -1).ravel(), group_BxL.ravel(), num_segments=num_groups
    )
    first_G = jax.ops.segment_min(
        jnp.where(in_sequence_BxL, column_BxL, L).ravel(), group_BxL.ravel(), num_segments=num_groups
    )
    pooled_G = jnp.where(last_kept_G >= 0, last_kept_G, first_G)
    return in_sequence_BxL & (column_BxL == pooled_G[group_BxL])


def pair_rewards(decoder_params, score_head, cfg, batch):
    """(chosen_P, rejected_P): each pair's sequence rewards, float32 (0 in unused slots)."""
    hidden_BxLxD = decoder.apply(
        decoder_params, cfg, batch.tokens_BxL, batch.positions_BxL, batch.segment_ids_BxL
    )
    scores_BxL = token_scores_BxLxC(score_head, hidden_BxLxD)[..., 0]
    pooled_BxL = pooled_token_mask_BxL(batch.tokens_BxL, batch.segment_ids_BxL, cfg.pad_token_id)
    values_BxL = jnp.where(pooled_BxL, scores_BxL, 0.0)
    pair_BxL, chosen_BxL = data_ops.token_pair_index(batch)
    num_pairs = batch.pair_valid_P.shape[0]
    chosen_P = jax.ops.segment_sum(
        (values_BxL * chosen_BxL).ravel(), pair_BxL.ravel(), num_segments=num_pairs
    )
    rejected_P = jax.ops.segment_sum(
        (values_BxL * (1 - chosen_BxL)).ravel(), pair_BxL.ravel(), num_segments=num_pairs
    )
    return chosen_P, rejected_P


def build(cfg, loss, sizes) -> Objective:
    section = loss.section("reward")
    if cfg.lora_rank:
        raise ValueError(
            "loss.type=reward trains the whole decoder with its score head; remove model.lora "
            "(adapters with a score head export to no checkpoint format here)"
        )

    def fn(params, ref_params, batch, state, rng):
        chosen_P, rejected_P = pair_rewards(
            policy_decoder(params, ref_params), params[SCORE_HEAD_KEY], cfg, batch
        )
        value, metrics = bradley_terry_loss(
            chosen_P,
            rejected_P,
            batch.pair_valid_P,
            margin_P=batch.margin_P,  # loss.reward.margin_field; None: no margins
            center_rewards_coefficient=section.center_rewards_coefficient,
        )
        per_pair = pair_outputs(metrics, chosen_P - rejected_P, batch, sizes["num_conditions"])
        return value, (metrics, state, per_pair)

    def init_parts(rng, decoder_params):
        return {
            SCORE_HEAD_KEY: init_score_head(
                rng, cfg.hidden_size, section.initializer_range, jnp.dtype(cfg.param_dtype)
            )
        }

    return Objective(fn, needs_reference=False, init_parts=init_parts)


def data_options(loss) -> dict[str, str | None]:
    return {"margin_field": loss.section("reward").margin_field}


def check(loss) -> None:
    coef = loss.section("reward").center_rewards_coefficient
    if coef is not None and coef < 0:
        raise ValueError(f"loss.reward.center_rewards_coefficient={coef} must be >= 0 (or null: off)")


METHOD = Method(
    name="reward",
    accepts=lambda loss: loss.names == ("reward",),
    build=build,
    section=RewardSection,
    no_precomputed_reference="a reward model has no reference model",
    check=check,
    data_options=data_options,
    over_length="drop",  # RewardTrainer drops a pair whose chosen or rejected exceeds max_length
)
