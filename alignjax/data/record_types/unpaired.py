"""KTO's unpaired records (`data.record_type: unpaired`), TRL's format: prompt, completion,
and a JSON boolean `label` (true: desirable)."""

from __future__ import annotations

import dataclasses

import numpy as np

from alignjax.data.batching import (
    Builder,
    layout_rows,
    pick_bucket,
    sequence_lengths,
    sequence_prompt_lengths,
)
from alignjax.data.formats import Conditioning, Text, align_forms, check_completion, text_field
from alignjax.data.record_types.registry import RecordType
from alignjax.data.records import BadRecord, RawRecord
from alignjax.data.tokenize import TokenizedSequence


@dataclasses.dataclass(frozen=True)
class UnpairedExample:
    """KTO's record: one completion, desirable (`label` true) or not."""

    prompt: Text
    completion: Text
    label: bool
    cond: Conditioning


@dataclasses.dataclass(frozen=True)
class UnpairedTokenized:
    """A KTO example: its sequence, and its completion as another prompt would take it."""

    sequence: TokenizedSequence
    # The completion cut only where any prompt would cut it (max_length - 1): the batcher
    # puts it after another example's prompt for the KL pairs, and cuts it to that budget.
    completion_ids: np.ndarray
    desirable: bool
    condition_id: int
    epoch: int

    @property
    def sequences(self) -> tuple[TokenizedSequence, ...]:
        return (self.sequence,)


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


def parse(row: dict, cond: Conditioning, cfg) -> UnpairedExample:
    prompt, completion = text_field(row, "prompt", allow_empty=True), text_field(row, "completion")
    prompt, completion = align_forms(prompt, completion)
    check_completion(completion, "completion")
    label = row.get("label")
    if not isinstance(label, bool):
        # 0/1 or "yes" would be guesses: TRL's unpaired datasets hold JSON booleans.
        raise BadRecord(
            "missing_field" if label is None else "wrong_type",
            f"'label' must be true (desirable) or false (undesirable), got {label!r}",
        )
    return UnpairedExample(prompt, completion, label, cond)


def tokenize(processor, ex: UnpairedExample, raw: RawRecord) -> UnpairedTokenized:
    prompt = processor.condition(ex.prompt, ex.cond)
    p, n_bos, r, _ = processor.response(prompt, ex.completion)
    sequence = processor.seq.sequence(p, n_bos, r)
    completion_ids = r[: processor.cfg.max_length - 1]
    return UnpairedTokenized(sequence, completion_ids, ex.label, processor.ids(ex.cond)[1], raw.epoch)


class UnpairedBuilder(Builder):
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


def make_builder(cfg, per_host_batch_size: int, pad_id: int) -> UnpairedBuilder:
    return UnpairedBuilder(per_host_batch_size, pad_id, cfg.effective_buckets, cfg.max_length)


def example_of(cfg, sequences: tuple) -> UnpairedTokenized:
    """Its KL row holds its prompt and a neighbour's completion: the sequence's own response."""
    (sequence,) = sequences
    return UnpairedTokenized(sequence, sequence.response_ids, desirable=True, condition_id=0, epoch=0)


RECORD_TYPE = RecordType(
    name="unpaired",
    parse=parse,
    tokenize=tokenize,
    make_builder=make_builder,
    row_lengths=sequence_lengths,
    prompt_lengths=sequence_prompt_lengths,
    example_of=example_of,
    slots=1,
)
