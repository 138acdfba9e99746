"""Pieces every method's loss shares: log-probs from the decoder, pair sums, eval outputs.

`params` here is the structured tree `{"decoder": ..., <part>: ...}`; a reference is a
bare decoder tree (it has no parts).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from alignjax.data import ops as data_ops
from alignjax.losses.dpo_pair_losses import PairLogps
from alignjax.losses.length_desensitised import length_desensitised_sums
from alignjax.losses.logps import token_log_sum_sq_probs
from alignjax.losses.logps_kernel import label_logps, require_full_distribution
from alignjax.models import decoder, head
from alignjax.models.config import ModelConfig
from alignjax.models.lora import Adapted
from alignjax.models.parts import DECODER, policy_decoder

__all__ = [
    "DECODER",
    "forward_logps",
    "log_sum_sq_from_hidden",
    "logps_from_hidden",
    "pair_logps",
    "pair_logps_from_tokens",
    "pair_outputs",
    "params_equal",
    "policy_decoder",
    "reference_or_own",
    "reference_pair_logps",
    "require_positive_beta",
    "require_unpacked",
    "scored_at_next",
]


def scored_at_next(values_BxL):
    """Per-token values computed from the hidden state at t (which scores token t + 1),
    moved to column t + 1 (0 at t = 0): the batches' mask convention.

    The hidden states go to the head whole and the shift happens here, on [B, L] values:
    slicing [B, L, D] to L - 1 columns would cut a length split over `sequence` unevenly."""
    return jnp.pad(values_BxL[:, :-1], ((0, 0), (1, 0)))


def logps_from_hidden(decoder_params, cfg: ModelConfig, loss, hidden_BxLxD, tokens_BxL):
    """log p(tokens[t] | tokens[<t]) at column t (0 at t = 0): the batches' mask convention.

    `loss` supplies the vocabulary chunking (`token_chunk`, `vocab_chunk`); `model.logps_kernel`
    picks the kernel.
    """
    unembed_DxV = head.unembedding_DxV(decoder_params, cfg).astype(cfg.dtype)
    # The last column has no next token: an id outside the vocabulary scores 0.
    next_tokens_BxL = jnp.pad(tokens_BxL[:, 1:], ((0, 0), (0, 1)), constant_values=-1)
    logps_BxL = label_logps(
        hidden_BxLxD,
        unembed_DxV,
        next_tokens_BxL,
        kernel=cfg.logps_kernel,
        final_logit_softcap=cfg.final_logit_softcap,
        token_chunk=loss.token_chunk,
        vocab_chunk=loss.vocab_chunk,
    )
    return scored_at_next(logps_BxL)


def log_sum_sq_from_hidden(decoder_params, cfg: ModelConfig, loss, hidden_BxLxD):
    """log sum_v p(v)^2 of the distribution that scores column t (0 at t = 0), no gradient:
    aligned with `logps_from_hidden` (WPO's weights)."""
    require_full_distribution(cfg.logps_kernel, "WPO's weights (loss.use_weighting)")
    unembed_DxV = head.unembedding_DxV(decoder_params, cfg).astype(cfg.dtype)
    log_sum_sq_BxL = token_log_sum_sq_probs(
        hidden_BxLxD,
        unembed_DxV,
        final_logit_softcap=cfg.final_logit_softcap,
        token_chunk=loss.token_chunk,
        vocab_chunk=loss.vocab_chunk,
    )
    return scored_at_next(log_sum_sq_BxL)


def forward_logps(decoder_params, cfg, loss, batch, extra=None):
    """Per-token log-probs of a batch's rows under one decoder tree."""
    hidden_BxLxD = decoder.apply(
        decoder_params, cfg, batch.tokens_BxL, batch.positions_BxL, batch.segment_ids_BxL, extra
    )
    return logps_from_hidden(decoder_params, cfg, loss, hidden_BxLxD, batch.tokens_BxL)


def pair_logps_from_tokens(logps_BxL, batch, ld_alpha: float | None = None) -> PairLogps:
    """Per-pair sums of per-token log-probs and the response lengths. With `ld_alpha`
    (LD-DPO) the sums down-weight each response's tail beyond the pair's shared length,
    and the plain chosen sums ride along for the NLL term."""
    chosen_P, rejected_P = data_ops.pair_sums(logps_BxL, batch)
    chosen_len_P, rejected_len_P = data_ops.pair_sums(jnp.ones_like(logps_BxL), batch)
    if ld_alpha is None:
        return PairLogps(chosen_P, rejected_P, chosen_len_P, rejected_len_P)
    pair_BxL, chosen_BxL = data_ops.token_pair_index(batch)
    ld_chosen_P, ld_rejected_P = length_desensitised_sums(
        logps_BxL,
        batch.loss_mask_BxL * (batch.segment_ids_BxL > 0),
        batch.segment_ids_BxL,
        pair_BxL,
        chosen_BxL,
        batch.num_pairs,
        ld_alpha,
    )
    return PairLogps(ld_chosen_P, ld_rejected_P, chosen_len_P, rejected_len_P, chosen_plain_logps_B=chosen_P)


def pair_logps(decoder_params, cfg, loss, batch, extra=None, ld_alpha: float | None = None) -> PairLogps:
    """Summed log-probs of each pair's chosen and rejected responses, and their lengths."""
    logps_BxL = forward_logps(decoder_params, cfg, loss, batch, extra)
    return pair_logps_from_tokens(logps_BxL, batch, ld_alpha)


def _same_computation(decoder_params, ref_params, cfg: ModelConfig) -> bool:
    """Whether equal values make the reference's forward the policy's: the same tree (a
    LoRA policy's base + adapters is not its adapters-off reference), and each reference
    leaf in the policy leaf's dtype, or in the compute dtype the policy is cast to anyway."""
    if jax.tree.structure(decoder_params) != jax.tree.structure(ref_params):
        return False
    return all(
        r.dtype == p.dtype or r.dtype == jnp.dtype(cfg.dtype)
        for p, r in zip(jax.tree.leaves(decoder_params), jax.tree.leaves(ref_params))
    )


def params_equal(decoder_params, ref_params) -> jax.Array:
    """Scalar bool: every reference parameter equals the policy's (in the reference dtype).
    One read of both trees: small next to a forward pass."""
    same = [
        jnp.all(p.astype(r.dtype) == r)
        for p, r in zip(jax.tree.leaves(decoder_params), jax.tree.leaves(ref_params))
    ]
    return jnp.all(jnp.stack(same))


def reference_pair_logps(
    policy: PairLogps, decoder_params, ref_params, cfg, loss, batch, ld_alpha: float | None = None
) -> PairLogps:
    """The reference's pair log-probs (summed as the policy's: `ld_alpha`), without gradient.

    When the reference equals the policy (the first step of a stage, whose reference is
    its starting parameters), these are the policy's own values, so every margin is
    exactly 0. Computed separately they differ by ~1e-6: the policy's forward keeps its
    activations for the backward, so XLA fuses it differently from the reference's. The
    reference forward is skipped on those steps (`lax.cond`)."""

    def sums_and_lengths(pairs: PairLogps) -> PairLogps:
        # Both branches of the cond below must be the same tree: the policy's extra
        # fields (LD-DPO's plain sums, WPO's aligned sums) are no reference's business.
        return PairLogps(*pairs[:4])

    def computed():
        return sums_and_lengths(pair_logps(ref_params, cfg, loss, batch, ld_alpha=ld_alpha))

    return reference_or_own(sums_and_lengths(policy), computed, decoder_params, ref_params, cfg)


def reference_or_own(own, computed, decoder_params, ref_params, cfg):
    """The reference's values, without gradient: `computed()` (a reference forward), or the
    policy's `own` values where the reference is the policy (see `reference_pair_logps`)."""
    own = jax.lax.stop_gradient(own)

    def computed_values():
        return jax.lax.stop_gradient(computed())

    if isinstance(decoder_params, Adapted):
        # LoRA: the policy's base is the reference's (one tree, shared). Against the base
        # alone the policy is the reference while every B is 0 (fresh adapters); against
        # base + starting adapters, while the adapters are unchanged.
        if isinstance(ref_params, Adapted):
            if decoder_params.dropout_rng is not None and cfg.lora_dropout > 0:
                # Adapter dropout perturbs the policy's forward (not the reference's, as in
                # PEFT with TRL), even while the adapters equal the starting ones.
                return computed_values()
            same = params_equal(decoder_params.adapters, ref_params.adapters)
        else:
            b_leaves = [
                x
                for path, x in jax.tree_util.tree_leaves_with_path(decoder_params.adapters)
                if jax.tree_util.keystr(path).endswith("['b']")
            ]
            same = jnp.all(jnp.stack([jnp.all(b == 0) for b in b_leaves]))
        return jax.lax.cond(same, lambda: own, computed_values)
    if not _same_computation(decoder_params, ref_params, cfg):
        return computed_values()
    return jax.lax.cond(params_equal(decoder_params, ref_params), lambda: own, computed_values)


def _per_condition(values_P, condition_P, valid_P, num_conditions: int):
    """Mean of values per condition id (0 = none), [num_conditions + 1]."""
    n = num_conditions + 1
    total = jax.ops.segment_sum(values_P * valid_P, condition_P, num_segments=n)
    count = jax.ops.segment_sum(valid_P, condition_P, num_segments=n)
    return total / jnp.maximum(count, 1.0), count


def pair_outputs(metrics, margin_P, batch, num_conditions: int):
    """Per-condition accuracies into `metrics`; per-pair margins for exact eval aggregation."""
    valid_P = batch.pair_valid_P.astype(jnp.float32)
    if num_conditions:
        acc_C, count_C = _per_condition(
            (margin_P > 0).astype(jnp.float32), batch.condition_id_P, valid_P, num_conditions
        )
        metrics["rewards/accuracies_by_condition"] = acc_C
        metrics["count_by_condition"] = count_C
    return {
        "margin_P": jax.lax.stop_gradient(margin_P),
        "valid_P": valid_P,
        "condition_P": batch.condition_id_P,
    }


def require_unpacked(batch, kind: str):
    if batch.segment_pair_index_BxS.shape[1] != 1:
        raise ValueError(
            f"loss.type={kind} compares chosen and rejected token by token: set data.packing: false"
        )


def require_positive_beta(loss) -> None:
    """The methods that take the DPO family's temperature (`loss.beta`) need it positive."""
    if not loss.beta > 0:
        raise ValueError(f"loss.beta={loss.beta} must be > 0")
