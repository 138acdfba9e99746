"""Tokenized examples -> fixed-shape batches: padding to length buckets, or packing.

Shapes are static per mode so the trainer compiles a bounded number of times:
padded batches take one of `data.buckets` as L; packed batches are always
[rows, pack_length] with a static number of sequence and pair slots.

A builder collects examples until the batch is full (padded: batch_size
examples; packed: the next example fits no row). It never drops an example:
one that does not fit opens the next batch. Each record type (`record_types/`)
declares its builder, from these parts, and its batch: typed, NumPy, shapes in the
names. Dimension letters: B rows, L tokens per row, S sequence (segment) slots per
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
- `*_valid_*`: 0 for padding examples that fill the last, partial batch to a
  fixed shape (and for unused pair slots in a packed batch): weigh means by it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

from alignjax.data.tokenize import TokenizedSequence


@dataclasses.dataclass
class Rows:
    """Row arrays for sequences placed in rows (packed or one per row)."""

    tokens_BxL: np.ndarray
    positions_BxL: np.ndarray
    segment_ids_BxL: np.ndarray
    loss_mask_BxL: np.ndarray
    user_slot_mask_BxL: np.ndarray
    token_weights_BxL: np.ndarray  # NaN on response tokens without given weights


def layout_rows(
    rows: Sequence[Sequence[TokenizedSequence]], length: int, pad_id: int, *, left_pad: bool = False
) -> Rows:
    """Place each row's sequences end to end (segments 1, 2, ...), pad the rest."""
    shape = (len(rows), length)
    out = Rows(
        tokens_BxL=np.full(shape, pad_id, np.int32),
        positions_BxL=np.zeros(shape, np.int32),
        segment_ids_BxL=np.zeros(shape, np.int32),
        loss_mask_BxL=np.zeros(shape, np.int32),
        user_slot_mask_BxL=np.zeros(shape, np.int32),
        token_weights_BxL=np.zeros(shape, np.float32),
    )
    for b, seqs in enumerate(rows):
        used = sum(len(s) for s in seqs)
        assert used <= length, (used, length)
        col = length - used if left_pad else 0
        for s, seq in enumerate(seqs):
            n, sl = len(seq), slice(col, col + len(seq))
            out.tokens_BxL[b, sl] = seq.tokens
            out.positions_BxL[b, sl] = np.arange(n)
            out.segment_ids_BxL[b, sl] = s + 1
            out.loss_mask_BxL[b, sl] = seq.loss_mask
            out.user_slot_mask_BxL[b, sl] = seq.user_slot_mask
            resp = slice(col + len(seq.prompt_ids), col + n)
            if seq.response_weights is not None:
                out.token_weights_BxL[b, resp] = seq.response_weights
            else:
                out.token_weights_BxL[b, resp] = np.nan  # the batch fills in its default
            col += n
    return out


def pick_bucket(buckets: Sequence[int], needed: int) -> int:
    for b in buckets:
        if b >= needed:
            return b
    raise AssertionError(f"a sequence of {needed} tokens is longer than every bucket {buckets}")


class Builder:
    """Collects examples into one batch. `add` returns False if the example must wait;
    `build` makes the batch of the examples added (padding examples fill it up)."""

    def __init__(self, batch_size: int, pad_id: int):
        self.batch_size = batch_size
        self.pad_id = pad_id
        self.examples: list = []

    def reset(self) -> None:
        self.examples = []

    @property
    def empty(self) -> bool:
        return not self.examples

    @property
    def full(self) -> bool:
        return len(self.examples) >= self.batch_size

    def add(self, example) -> bool:
        self.examples.append(example)
        return True

    def build(self) -> Any:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class SequenceLayout:
    """Where a batch's examples' sequences went (padded or packed), for the record type's
    batch: segment s + 1 of row b holds view `segment_view_BxS[b, s]` (the position of the
    sequence in `example.sequences`) of example `segment_example_BxS[b, s]`."""

    rows: Rows
    segment_example_BxS: np.ndarray  # int32
    segment_view_BxS: np.ndarray  # int32
    example_valid_E: np.ndarray  # int32


# (layout, the examples added) -> the record type's batch.
Assemble = Callable[[SequenceLayout, list], Any]


class PaddedSequenceBuilder(Builder):
    """Examples of k sequences each (`example.sequences`), one sequence per row: view v of
    example i in row v * batch_size + i, padded to the smallest bucket that fits."""

    def __init__(self, batch_size, pad_id, buckets, *, sequences_per_example: int, assemble: Assemble):
        super().__init__(batch_size, pad_id)
        self.buckets = buckets
        self.k = sequences_per_example
        self.assemble = assemble

    def build(self):
        examples, k, n_ex = self.examples, self.k, self.batch_size
        rows = [[] for _ in range(k * n_ex)]
        seg_example = np.zeros((k * n_ex, 1), np.int32)
        seg_view = np.zeros((k * n_ex, 1), np.int32)
        for v in range(k):
            for i in range(n_ex):
                seg_example[v * n_ex + i, 0] = i
                seg_view[v * n_ex + i, 0] = v
                if i < len(examples):
                    rows[v * n_ex + i] = [examples[i].sequences[v]]
        longest = max((len(s) for r in rows for s in r), default=1)
        laid = layout_rows(rows, pick_bucket(self.buckets, longest), self.pad_id)
        return self.assemble(_layout(laid, seg_example, seg_view, n_ex, len(examples)), examples)


class PackedSequenceBuilder(Builder):
    """Whole examples (a pair's chosen and rejected together) first-fit into rows."""

    def __init__(
        self,
        rows,
        pad_id,
        pack_length,
        max_sequences_per_row,
        *,
        sequences_per_example: int,
        assemble: Assemble,
    ):
        super().__init__(rows, pad_id)
        self.pack_length = pack_length
        self.max_sequences_per_row = max_sequences_per_row
        self.k = sequences_per_example
        self.assemble = assemble
        self.reset()

    def reset(self) -> None:
        self.examples = []
        self.rows: list[list[int]] = [[] for _ in range(self.batch_size)]  # example indices
        self.used = [0] * self.batch_size

    @property
    def full(self) -> bool:
        return len(self.examples) >= self.batch_size * (self.max_sequences_per_row // self.k)

    def add(self, example) -> bool:
        need = sum(len(s) for s in example.sequences)
        for r in range(self.batch_size):
            fits = self.used[r] + need <= self.pack_length
            if fits and (len(self.rows[r]) + 1) * self.k <= self.max_sequences_per_row:
                self.rows[r].append(len(self.examples))
                self.used[r] += need
                self.examples.append(example)
                return True
        assert self.examples, "an example longer than pack_length passed validation"
        return False

    def build(self):
        examples, S = self.examples, self.max_sequences_per_row
        n_ex = self.batch_size * (S // self.k)
        rows = [[] for _ in self.rows]
        seg_example = np.zeros((len(self.rows), S), np.int32)
        seg_view = np.zeros((len(self.rows), S), np.int32)
        for r, ex_ids in enumerate(self.rows):
            for e in ex_ids:
                for v, seq in enumerate(examples[e].sequences):
                    seg_example[r, len(rows[r])] = e
                    seg_view[r, len(rows[r])] = v
                    rows[r].append(seq)
        laid = layout_rows(rows, self.pack_length, self.pad_id)
        return self.assemble(_layout(laid, seg_example, seg_view, n_ex, len(examples)), examples)


def _layout(laid: Rows, seg_example, seg_view, n_ex: int, n_real: int) -> SequenceLayout:
    valid = np.zeros(n_ex, np.int32)
    valid[:n_real] = 1
    return SequenceLayout(laid, seg_example, seg_view, valid)


def sequence_lengths(example) -> tuple[int, ...]:
    """The lengths of an example's `sequences` (one row or segment each)."""
    return tuple(len(s) for s in example.sequences)


def sequence_prompt_lengths(example) -> tuple[int, ...]:
    """The prompt lengths of an example's `sequences`."""
    return tuple(len(s.prompt_ids) for s in example.sequences)


def sequence_builder(cfg, per_host_batch_size: int, pad_id: int, k: int, assemble: Assemble) -> Builder:
    """The padded or packed (`data.packing`) builder for examples of k sequences each."""
    if cfg.packing:
        return PackedSequenceBuilder(
            per_host_batch_size,
            pad_id,
            cfg.effective_pack_length,
            cfg.max_sequences_per_row,
            sequences_per_example=k,
            assemble=assemble,
        )
    return PaddedSequenceBuilder(
        per_host_batch_size, pad_id, cfg.effective_buckets, sequences_per_example=k, assemble=assemble
    )
