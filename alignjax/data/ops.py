"""Pure jnp functions over batches, for use inside the jitted train step.

Importing this module registers the batch dataclasses as JAX pytrees, so a
batch can be passed to `jax.jit` whole (shapes static, values traced).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from alignjax.data.record_types.cut import CutBatch
from alignjax.data.record_types.preference import PairBatch
from alignjax.data.record_types.prompt import PromptBatch
from alignjax.data.record_types.sft import SftBatch
from alignjax.data.record_types.unpaired import UnpairedBatch

for _cls in (PairBatch, SftBatch, CutBatch, UnpairedBatch):
    jax.tree_util.register_dataclass(
        _cls, data_fields=[f.name for f in dataclasses.fields(_cls)], meta_fields=[]
    )
jax.tree_util.register_dataclass(
    PromptBatch,
    data_fields=[f.name for f in dataclasses.fields(PromptBatch) if f.name != "prompts"],
    meta_fields=["prompts"],
)


def token_pair_index(batch: PairBatch) -> tuple[jax.Array, jax.Array]:
    """(pair index, is-chosen) of every token, [B, L] each; padding maps to pair 0."""
    seg_BxL = jnp.maximum(batch.segment_ids_BxL - 1, 0)
    pair_BxL = jnp.take_along_axis(batch.segment_pair_index_BxS, seg_BxL, axis=1)
    chosen_BxL = jnp.take_along_axis(batch.segment_is_chosen_BxS, seg_BxL, axis=1)
    return pair_BxL, chosen_BxL


def pair_sums(token_values_BxL: jax.Array, batch: PairBatch) -> tuple[jax.Array, jax.Array]:
    """Sum `token_values` over each pair's chosen and rejected response tokens.

    Only tokens with loss_mask == 1 count (so pass per-token log-probs aligned
    with the tokens: value[t] = log p(tokens[t] | tokens[<t])). Works for padded
    and packed batches alike; P is static (batch.num_pairs), so it jits.
    Returns (chosen_P, rejected_P).
    """
    pair_BxL, chosen_BxL = token_pair_index(batch)
    values_BxL = token_values_BxL * (batch.loss_mask_BxL * (batch.segment_ids_BxL > 0))
    num_pairs = batch.pair_valid_P.shape[0]
    chosen_P = jax.ops.segment_sum(
        (values_BxL * chosen_BxL).ravel(), pair_BxL.ravel(), num_segments=num_pairs
    )
    rejected_P = jax.ops.segment_sum(
        (values_BxL * (1 - chosen_BxL)).ravel(), pair_BxL.ravel(), num_segments=num_pairs
    )
    return chosen_P, rejected_P


def example_sums(token_values_BxL: jax.Array, batch: SftBatch) -> jax.Array:
    """Sum `token_values` over each SFT example's response tokens -> [E] (jit-able)."""
    seg_BxL = jnp.maximum(batch.segment_ids_BxL - 1, 0)
    example_BxL = jnp.take_along_axis(batch.segment_example_index_BxS, seg_BxL, axis=1)
    values_BxL = token_values_BxL * (batch.loss_mask_BxL * (batch.segment_ids_BxL > 0))
    return jax.ops.segment_sum(
        values_BxL.ravel(), example_BxL.ravel(), num_segments=batch.example_valid_E.shape[0]
    )


def remove_user_slots(batch: PairBatch | SftBatch):
    """The batch as the reference model must see it: P-DPO user slots removed.

    Each row is compacted (slot tokens dropped, the rest moved left, padding
    appended) and positions renumbered, so the reference computes exactly what
    it would on rows that never had slots; loss-masked tokens keep their order,
    so `pair_sums` on the result pairs up with `pair_sums` on the policy's rows.
    """
    if batch.user_slot_mask_BxL is None:
        return batch
    slot_BxL = batch.user_slot_mask_BxL.astype(bool)
    # Stable sort: kept tokens first, in order; slot tokens go to the end as padding.
    order_BxL = jnp.argsort(slot_BxL, axis=1, stable=True)

    def take(x_BxL):
        return jnp.take_along_axis(x_BxL, order_BxL, axis=1)

    kept_BxL = take(~slot_BxL)
    segment_ids_BxL = jnp.where(kept_BxL, take(batch.segment_ids_BxL), 0)
    slots_before_BxL = take(jnp.cumsum(slot_BxL, axis=1) - slot_BxL)
    # Slots of a segment sit right after its first token, so every later token of
    # that segment moves back by the same count: positions stay contiguous.
    seg_slots_BxL = slots_before_BxL - _segment_start_value(slots_before_BxL, segment_ids_BxL)
    positions_BxL = jnp.where(kept_BxL, take(batch.positions_BxL) - seg_slots_BxL, 0)
    replace = dict(
        tokens_BxL=take(batch.tokens_BxL),
        positions_BxL=positions_BxL.astype(batch.positions_BxL.dtype),
        segment_ids_BxL=segment_ids_BxL,
        loss_mask_BxL=jnp.where(kept_BxL, take(batch.loss_mask_BxL), 0),
        user_slot_mask_BxL=jnp.zeros_like(batch.user_slot_mask_BxL),
    )
    if getattr(batch, "token_weights_BxL", None) is not None:
        replace["token_weights_BxL"] = jnp.where(kept_BxL, take(batch.token_weights_BxL), 0)
    return dataclasses.replace(batch, **replace)


def _segment_start_value(values_BxL, segment_ids_BxL):
    """values at each token's segment's first token (segments are contiguous runs)."""
    L = values_BxL.shape[1]
    is_start_BxL = jnp.concatenate(
        [
            jnp.ones_like(segment_ids_BxL[:, :1], bool),
            segment_ids_BxL[:, 1:] != segment_ids_BxL[:, :-1],
        ],
        axis=1,
    )
    start_col_BxL = jax.lax.cummax(jnp.where(is_start_BxL, jnp.arange(L)[None, :], 0), axis=1)
    return jnp.take_along_axis(values_BxL, start_col_BxL, axis=1)
