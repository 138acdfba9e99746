"""LD-DPO: pair sums of log-probs with each response's verbose tail down-weighted (`ld_alpha`).

Within a pair, the first min(|y_w|, |y_l|) response tokens of each side are the shared
part; the tokens beyond it (only the longer response has any) are the tail. A response's
log-prob is `shared + ld_alpha * tail`, so the length gap between chosen and rejected
weighs less on the margin (TRL's `ld_alpha`; 1 is plain DPO, 0 drops the tail).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from alignjax.losses.sequence import as_float


def response_ranks(mask_BxL: jax.Array, segment_ids_BxL: jax.Array) -> jax.Array:
    """1-based position of each response token within its own sequence, 0 off the response, [B, L].

    Sequences are the contiguous runs of one segment id (several per row when packed).
    """
    in_response_BxL = mask_BxL.astype(jnp.int32)
    through_BxL = jnp.cumsum(in_response_BxL, axis=1)
    before_BxL = through_BxL - in_response_BxL
    length = segment_ids_BxL.shape[1]
    starts_BxL = jnp.concatenate(
        [
            jnp.ones_like(segment_ids_BxL[:, :1], bool),
            segment_ids_BxL[:, 1:] != segment_ids_BxL[:, :-1],
        ],
        axis=1,
    )
    start_col_BxL = jax.lax.cummax(jnp.where(starts_BxL, jnp.arange(length)[None, :], 0), axis=1)
    ranks_BxL = through_BxL - jnp.take_along_axis(before_BxL, start_col_BxL, axis=1)
    return jnp.where(in_response_BxL > 0, ranks_BxL, 0)


def length_desensitised_sums(
    token_logps_BxL: jax.Array,
    mask_BxL: jax.Array,
    segment_ids_BxL: jax.Array,
    pair_BxL: jax.Array,
    chosen_BxL: jax.Array,
    num_pairs: int,
    ld_alpha: float,
) -> tuple[jax.Array, jax.Array]:
    """(chosen_P, rejected_P): `shared + ld_alpha * tail` of each pair's summed response log-probs.

    mask_BxL: 1 on response tokens (0 on prompts, padding and unused slots); pair_BxL and
    chosen_BxL: each token's pair index and side. Masked-out entries are selected away,
    so a non-finite value on padding cannot leak in.
    """
    keep_BxL = mask_BxL.astype(bool)
    chosen_side_BxL = chosen_BxL.astype(bool)
    pair_N = pair_BxL.ravel()

    def per_pair(values_BxL, side_BxL):
        return jax.ops.segment_sum(
            jnp.where(keep_BxL & side_BxL, values_BxL, 0).ravel(), pair_N, num_segments=num_pairs
        )

    ones_BxL = jnp.ones(mask_BxL.shape, jnp.int32)
    shared_len_P = jnp.minimum(per_pair(ones_BxL, chosen_side_BxL), per_pair(ones_BxL, ~chosen_side_BxL))
    shared_BxL = response_ranks(keep_BxL, segment_ids_BxL) <= shared_len_P[pair_BxL]
    logps_BxL = as_float(token_logps_BxL)
    zeros_BxL = jnp.zeros_like(logps_BxL)
    shared_values_BxL = jnp.where(shared_BxL, logps_BxL, zeros_BxL)
    tail_values_BxL = jnp.where(shared_BxL, zeros_BxL, logps_BxL)

    def weighted(side_BxL):
        return per_pair(shared_values_BxL, side_BxL) + ld_alpha * per_pair(tail_values_BxL, side_BxL)

    return weighted(chosen_side_BxL), weighted(~chosen_side_BxL)
