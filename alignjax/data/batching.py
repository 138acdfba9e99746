"""Tokenized examples -> fixed-shape batches: padding to length buckets, or packing.

Shapes are static per mode so the trainer compiles a bounded number of times:
padded batches take one of `data.buckets` as L; packed batches are always
[rows, pack_length] with a static number of sequence and pair slots.

A builder collects examples until the batch is full (padded: batch_size
examples; packed: the next example fits no row). It never drops an example:
one that does not fit opens the next batch.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from alignjax.data.batch import CutBatch, PairBatch, PromptBatch, SftBatch, UnpairedBatch
from alignjax.data.examples import CutTokenized, PromptTokenized, UnpairedTokenized
from alignjax.data.tokenize import TokenizedSequence


@dataclasses.dataclass
class _Rows:
    """Row arrays for sequences placed in rows (packed or one per row)."""

    tokens_BxL: np.ndarray
    positions_BxL: np.ndarray
    segment_ids_BxL: np.ndarray
    loss_mask_BxL: np.ndarray
    user_slot_mask_BxL: np.ndarray
    token_weights_BxL: np.ndarray


def layout_rows(
    rows: Sequence[Sequence[TokenizedSequence]], length: int, pad_id: int, *, left_pad: bool = False
) -> _Rows:
    """Place each row's sequences end to end (segments 1, 2, ...), pad the rest."""
    shape = (len(rows), length)
    out = _Rows(
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
                out.token_weights_BxL[b, resp] = np.nan  # filled with the default below
            col += n
    return out


def pick_bucket(buckets: Sequence[int], needed: int) -> int:
    for b in buckets:
        if b >= needed:
            return b
    raise AssertionError(f"a sequence of {needed} tokens is longer than every bucket {buckets}")


class _Builder:
    """Collects examples into one batch. `add` returns False if the example must wait."""

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


class PaddedSequenceBuilder(_Builder):
    """Pairs (2 rows each: chosen block then rejected block) or SFT examples, padded."""

    def __init__(
        self,
        batch_size,
        pad_id,
        buckets,
        *,
        with_slots,
        token_weight_default,
        sequences_per_example,
        with_margins=False,
    ):
        super().__init__(batch_size, pad_id)
        self.buckets = buckets
        self.with_margins = with_margins
        self.with_slots = with_slots
        self.token_weight_default = token_weight_default
        self.k = sequences_per_example

    def build(self):
        return _build_sequences(self, packed_rows=None)


class PackedSequenceBuilder(_Builder):
    """Whole examples (a pair's chosen and rejected together) first-fit into rows."""

    def __init__(
        self,
        rows,
        pad_id,
        pack_length,
        max_sequences_per_row,
        *,
        with_slots,
        token_weight_default,
        sequences_per_example,
        with_margins=False,
    ):
        super().__init__(rows, pad_id)
        self.with_margins = with_margins
        self.pack_length = pack_length
        self.max_sequences_per_row = max_sequences_per_row
        self.with_slots = with_slots
        self.token_weight_default = token_weight_default
        self.k = sequences_per_example
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
        return _build_sequences(self, packed_rows=self.rows)


def _build_sequences(builder, packed_rows):
    """PairBatch (k = 2 sequences per example) or SftBatch (k = 1)."""
    examples, k = builder.examples, builder.k
    is_pair = k == 2
    if packed_rows is None:
        n_ex = builder.batch_size
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
        length = pick_bucket(builder.buckets, longest)
    else:
        n_ex = builder.batch_size * (builder.max_sequences_per_row // k)
        S = builder.max_sequences_per_row
        rows = [[] for _ in packed_rows]
        seg_example = np.zeros((len(packed_rows), S), np.int32)
        seg_view = np.zeros((len(packed_rows), S), np.int32)
        for r, ex_ids in enumerate(packed_rows):
            for e in ex_ids:
                for v, seq in enumerate(examples[e].sequences):
                    seg_example[r, len(rows[r])] = e
                    seg_view[r, len(rows[r])] = v
                    rows[r].append(seq)
        length = builder.pack_length
    laid = layout_rows(rows, length, builder.pad_id)
    valid = np.zeros(n_ex, np.int32)
    valid[: len(examples)] = 1
    user = np.zeros(n_ex, np.int32)
    cond = np.zeros(n_ex, np.int32)
    keys = np.zeros(n_ex, np.int64)
    margins = np.zeros(n_ex, np.float32)
    for i, ex in enumerate(examples):
        user[i], cond[i] = ex.user_index, ex.condition_id
        if is_pair:
            keys[i], margins[i] = ex.record_key, ex.margin
    slots = laid.user_slot_mask_BxL if builder.with_slots else None
    if is_pair:
        weights = None
        if builder.token_weight_default is not None:
            weights = np.where(
                np.isnan(laid.token_weights_BxL),
                builder.token_weight_default,
                laid.token_weights_BxL,
            ).astype(np.float32)
        return PairBatch(
            tokens_BxL=laid.tokens_BxL,
            positions_BxL=laid.positions_BxL,
            segment_ids_BxL=laid.segment_ids_BxL,
            loss_mask_BxL=laid.loss_mask_BxL,
            segment_pair_index_BxS=seg_example,
            segment_is_chosen_BxS=(seg_view == 0).astype(np.int32),
            pair_valid_P=valid,
            user_index_P=user,
            condition_id_P=cond,
            record_key_P=keys,
            user_slot_mask_BxL=slots,
            token_weights_BxL=weights,
            margin_P=margins if builder.with_margins else None,
        )
    return SftBatch(
        tokens_BxL=laid.tokens_BxL,
        positions_BxL=laid.positions_BxL,
        segment_ids_BxL=laid.segment_ids_BxL,
        loss_mask_BxL=laid.loss_mask_BxL,
        segment_example_index_BxS=seg_example,
        example_valid_E=valid,
        user_index_E=user,
        condition_id_E=cond,
        user_slot_mask_BxL=slots,
    )


class CutBuilder(_Builder):
    def __init__(self, batch_size, pad_id, buckets):
        super().__init__(batch_size, pad_id)
        self.buckets = buckets

    def build(self) -> CutBatch:
        E = self.batch_size
        rows = [[] for _ in range(2 * E)]
        satisfactory = np.zeros(E, np.int32)
        score = np.full(E, np.nan, np.float32)
        cond = np.zeros(E, np.int32)
        for i, ex in enumerate(self.examples):
            ex: CutTokenized
            rows[i] = [ex.judged]
            if ex.misaligned is not None:
                rows[E + i] = [ex.misaligned]
            satisfactory[i] = ex.misaligned is None
            score[i], cond[i] = ex.score, ex.condition_id
        longest = max((len(s) for r in rows for s in r), default=1)
        laid = layout_rows(rows, pick_bucket(self.buckets, longest), self.pad_id, left_pad=True)
        valid = np.zeros(E, np.int32)
        valid[: len(self.examples)] = 1
        return CutBatch(
            tokens_BxL=laid.tokens_BxL,
            positions_BxL=laid.positions_BxL,
            segment_ids_BxL=laid.segment_ids_BxL,
            loss_mask_BxL=laid.loss_mask_BxL,
            is_satisfactory_E=satisfactory,
            example_valid_E=valid,
            score_E=score,
            condition_id_E=cond,
        )


class UnpairedBuilder(_Builder):
    """KTO's batches: each example's row, then its mismatched (KL) row."""

    def __init__(self, batch_size, pad_id, buckets, max_length):
        super().__init__(batch_size, pad_id)
        self.buckets = buckets
        self.max_length = max_length

    def build(self) -> UnpairedBatch:
        E = self.batch_size
        exs: list[UnpairedTokenized] = self.examples
        rows = [[] for _ in range(2 * E)]
        desirable, cond = np.zeros(E, np.int32), np.zeros(E, np.int32)
        for i, ex in enumerate(exs):
            rows[i] = [ex.sequence]
            # TRL's pairing: completions rotated by one within the batch, (x_i, y_{i-1}),
            # cut as that prompt cuts its own completion (keep start, to max_length).
            other = exs[i - 1]
            prompt_ids = ex.sequence.prompt_ids
            rows[E + i] = [
                dataclasses.replace(
                    ex.sequence,
                    response_ids=other.completion_ids[: self.max_length - len(prompt_ids)],
                    response_weights=None,
                )
            ]
            desirable[i], cond[i] = ex.desirable, ex.condition_id
        longest = max((len(s) for r in rows for s in r), default=1)
        laid = layout_rows(rows, pick_bucket(self.buckets, longest), self.pad_id)
        valid = np.zeros(E, np.int32)
        valid[: len(exs)] = 1
        return UnpairedBatch(
            tokens_BxL=laid.tokens_BxL,
            positions_BxL=laid.positions_BxL,
            segment_ids_BxL=laid.segment_ids_BxL,
            loss_mask_BxL=laid.loss_mask_BxL,
            desirable_E=desirable,
            example_valid_E=valid,
            condition_id_E=cond,
        )


class PromptBuilder(_Builder):
    def __init__(self, batch_size, pad_id, buckets, n_objectives):
        super().__init__(batch_size, pad_id)
        self.buckets = buckets
        self.n_objectives = n_objectives

    def build(self) -> PromptBatch:
        B = self.batch_size
        exs: list[PromptTokenized] = self.examples

        def left_padded(key):
            seqs = [getattr(e, key) for e in exs]
            length = pick_bucket(self.buckets, max((len(s) for s in seqs), default=1))
            tokens = np.full((B, length), self.pad_id, np.int32)
            segments = np.zeros((B, length), np.int32)
            positions = np.zeros((B, length), np.int32)
            for i, s in enumerate(seqs):
                tokens[i, length - len(s) :] = s
                segments[i, length - len(s) :] = 1
                positions[i, length - len(s) :] = np.arange(len(s))
            return tokens, segments, positions

        tokens, segments, positions = left_padded("prompt_ids")
        plain_tokens, plain_segments, _ = left_padded("unconditioned_ids")
        weights = np.zeros((B, self.n_objectives), np.float32)
        valid, user, cond = (np.zeros(B, np.int32) for _ in range(3))
        for i, e in enumerate(exs):
            weights[i], valid[i], user[i], cond[i] = (
                e.objective_weights,
                1,
                e.user_index,
                e.condition_id,
            )
        return PromptBatch(
            tokens_BxL=tokens,
            positions_BxL=positions,
            segment_ids_BxL=segments,
            unconditioned_tokens_BxL=plain_tokens,
            unconditioned_segment_ids_BxL=plain_segments,
            objective_weights_BxK=weights,
            example_valid_B=valid,
            user_index_B=user,
            condition_id_B=cond,
            prompts=tuple(e.prompt for e in exs) + ("",) * (B - len(exs)),
        )


def make_builder(cfg, per_host_batch_size: int, pad_id: int) -> _Builder:
    """The builder for `cfg.record_type` and `cfg.packing`."""
    with_slots = cfg.n_user_tokens > 0
    weight_default = cfg.default_token_weight if cfg.token_weights else None
    with_margins = cfg.margin_field is not None and cfg.record_type == "preference"
    buckets = cfg.effective_buckets
    if cfg.record_type == "cut":
        return CutBuilder(per_host_batch_size, pad_id, buckets)
    if cfg.record_type == "unpaired":
        return UnpairedBuilder(per_host_batch_size, pad_id, buckets, cfg.max_length)
    if cfg.record_type == "prompt":
        return PromptBuilder(per_host_batch_size, pad_id, buckets, len(cfg.templates.objectives))
    k = 2 if cfg.record_type == "preference" else 1
    if cfg.packing:
        return PackedSequenceBuilder(
            per_host_batch_size,
            pad_id,
            cfg.effective_pack_length,
            cfg.max_sequences_per_row,
            with_slots=with_slots,
            token_weight_default=weight_default,
            sequences_per_example=k,
            with_margins=with_margins,
        )
    return PaddedSequenceBuilder(
        per_host_batch_size,
        pad_id,
        buckets,
        with_slots=with_slots,
        token_weight_default=weight_default,
        sequences_per_example=k,
        with_margins=with_margins,
    )
