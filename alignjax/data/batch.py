"""The batches the trainer receives: typed, NumPy, shapes in the names.

Dimension letters: B rows, L tokens per row, S sequence (segment) slots per
row, P pairs, E examples, K objectives.

Conventions shared by every batch:
- `segment_ids_BxL`: 0 = padding, 1..S = the sequence a token belongs to
  (one per row unless packed). Attention must stay within a segment.
- `positions_BxL`: 0 at each sequence's first token, +1 per token (padding: 0).
- `loss_mask_BxL` is INPUT-ALIGNED: `loss_mask[b, t] == 1` means token
  `tokens[b, t]` is a response token and a target, predicted from the model's
  output at position `t - 1` of the same row. So
  `logp[b, t] = log_softmax(logits[b, t - 1])[tokens[b, t]]` for t >= 1, and
  the mask is 0 at t = 0 and at every sequence's first token (BOS or prompt),
  so no target is ever predicted across a segment boundary.
- `user_slot_mask_BxL` (P-DPO): 1 at the `n_user_tokens` placeholder slots
  right after BOS; the policy replaces their embeddings with the user's soft
  tokens; the reference must not see them (`ops.remove_user_slots`).
- `token_weights_BxL` (SparsePO given weights): weight of each response token,
  0 elsewhere.
- `record_key_P` (host only): the record each pair came from (`records.record_key`:
  source index and row), the same whatever the shuffle, epoch, process or worker;
  0 for padding. int64, which JAX without x64 would truncate, so the trainer drops
  it before the batch goes to the devices.
- `ref_*_logps_P`: precomputed reference log-probs (`loss.reference: precomputed`),
  looked up by record key on the host by the trainer; None otherwise.
- `*_valid_*`: 0 for padding examples that fill the last, partial batch to a
  fixed shape (and for unused pair slots in a packed batch): weigh means by it.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class PairBatch:
    """Preference pairs.

    Padded: B = 2P rows, rows [0, P) chosen and [P, 2P) rejected (pair i is
    rows i and P + i), S = 1. Packed: each row holds whole pairs, chosen then
    rejected as consecutive segments. Either way the segment -> pair map below
    gives per-sequence sums (`ops.pair_sums`).
    """

    tokens_BxL: np.ndarray  # int32
    positions_BxL: np.ndarray  # int32
    segment_ids_BxL: np.ndarray  # int32
    loss_mask_BxL: np.ndarray  # int32
    segment_pair_index_BxS: np.ndarray  # int32, pair of segment s+1 (0 for unused)
    segment_is_chosen_BxS: np.ndarray  # int32, 1 chosen / 0 rejected
    pair_valid_P: np.ndarray  # int32
    user_index_P: np.ndarray  # int32, P-DPO user (0 = generic / unseen)
    condition_id_P: np.ndarray  # int32, data.condition_field index (0 = none)
    record_key_P: np.ndarray | None = None  # int64, host only (see above)
    user_slot_mask_BxL: np.ndarray | None = None  # int32, when n_user_tokens > 0
    token_weights_BxL: np.ndarray | None = None  # float32, when data.token_weights
    ref_chosen_logps_P: np.ndarray | None = None  # float32, summed over the response
    ref_rejected_logps_P: np.ndarray | None = None  # float32
    # Per-pair loss weights (MO-ODPO's one-winner-per-objective pairs carry w_k); None = 1.
    pair_weight_P: np.ndarray | None = None  # float32
    # Per-pair margins (data.margin_field, reward models); None without the field.
    margin_P: np.ndarray | None = None  # float32

    @property
    def num_pairs(self) -> int:
        return self.pair_valid_P.shape[0]

    @property
    def rows_in_halves(self) -> bool:
        """Whether row i's partner is row B/2 + i (padded pairs), so a multi-host batch
        must keep the halves apart when it joins the processes' rows."""
        return self.tokens_BxL.shape[0] == 2 * self.num_pairs


@dataclasses.dataclass(frozen=True)
class SftBatch:
    """Prompt/response examples (SFT, or MetaAlign's first stage). Packed or padded."""

    tokens_BxL: np.ndarray  # int32
    positions_BxL: np.ndarray  # int32
    segment_ids_BxL: np.ndarray  # int32
    loss_mask_BxL: np.ndarray  # int32
    segment_example_index_BxS: np.ndarray  # int32
    example_valid_E: np.ndarray  # int32
    user_index_E: np.ndarray  # int32
    condition_id_E: np.ndarray  # int32
    user_slot_mask_BxL: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class CutBatch:
    """CUT's views in one concatenated forward, E examples in B = 2E rows.

    Rows [0, E): the judged view, Align-P (prompt -> satisfactory response) or
    Align-N (prompt + judgment -> unsatisfactory response). Rows [E, 2E): the
    Misalign view (prompt -> the same unsatisfactory response); all padding for
    satisfactory examples. Rows are LEFT-padded, so row e and row E + e hold the
    same response tokens in the same columns: the CUT token ratio
    p(y_t | x, j) / p(y_t | x) is a column-wise comparison.
    """

    tokens_BxL: np.ndarray  # int32
    positions_BxL: np.ndarray  # int32
    segment_ids_BxL: np.ndarray  # int32
    loss_mask_BxL: np.ndarray  # int32
    is_satisfactory_E: np.ndarray  # int32
    example_valid_E: np.ndarray  # int32
    score_E: np.ndarray  # float32, NaN when the record has none
    condition_id_E: np.ndarray  # int32

    # Example e's two views are rows e and E + e.
    rows_in_halves = True


@dataclasses.dataclass(frozen=True)
class UnpairedBatch:
    """KTO's examples in B = 2E rows, right-padded, one sequence per row.

    Rows [0, E): example e's prompt and completion. Rows [E, 2E): example e's prompt with
    the completion of example e - 1 (example E' - 1's for e = 0, E' the valid examples),
    the mismatched pairs the KL reference point is estimated from, as TRL pairs them.
    """

    tokens_BxL: np.ndarray  # int32
    positions_BxL: np.ndarray  # int32
    segment_ids_BxL: np.ndarray  # int32
    loss_mask_BxL: np.ndarray  # int32
    desirable_E: np.ndarray  # int32, the record's label (1 = desirable)
    example_valid_E: np.ndarray  # int32
    condition_id_E: np.ndarray  # int32

    # Example e's two rows are e and E + e.
    rows_in_halves = True


@dataclasses.dataclass(frozen=True)
class PromptBatch:
    """Prompts for online sampling (MO-ODPO), LEFT-padded so generation starts at column L."""

    tokens_BxL: np.ndarray  # int32, conditioned prompt (weights in the system prompt)
    positions_BxL: np.ndarray  # int32
    segment_ids_BxL: np.ndarray  # int32
    unconditioned_tokens_BxL: np.ndarray  # int32, for reward functions (no weights)
    unconditioned_segment_ids_BxL: np.ndarray  # int32
    objective_weights_BxK: np.ndarray  # float32, data.templates.weights order
    example_valid_B: np.ndarray  # int32
    user_index_B: np.ndarray  # int32
    condition_id_B: np.ndarray  # int32
    # The records' prompts as JSON (str or messages), to re-condition with freshly
    # drawn weights; plain Python, keep it out of jit.
    prompts: tuple = ()
