"""Prompt / response examples (`data.record_type: sft`): SFT, or MetaAlign's first stage.

A record is `messages` (the last assistant message on is the response), or `prompt`
with `response` (or TRL's `completion`).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from alignjax.data.batching import (
    SequenceLayout,
    sequence_builder,
    sequence_lengths,
    sequence_prompt_lengths,
)
from alignjax.data.formats import Conditioning, Text, align_forms, check_completion, messages, text_field
from alignjax.data.record_types.registry import RecordType
from alignjax.data.records import BadRecord, RawRecord
from alignjax.data.tokenize import TokenizedSequence


@dataclasses.dataclass(frozen=True)
class SftExample:
    prompt: Text
    response: Text
    cond: Conditioning


@dataclasses.dataclass(frozen=True)
class SftTokenized:
    sequence: TokenizedSequence
    user_index: int
    condition_id: int
    epoch: int

    @property
    def sequences(self) -> tuple[TokenizedSequence, ...]:
        return (self.sequence,)


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


def parse(row: dict, cond: Conditioning, cfg) -> SftExample:
    if row.get("messages") is not None:
        conversation = messages(row["messages"], "messages")
        last = max((i for i, m in enumerate(conversation) if m["role"] == "assistant"), default=None)
        if last is None:
            raise BadRecord("bad_conversation", "messages has no assistant message")
        prompt, response = conversation[:last], conversation[last:]
    else:
        key = "response" if row.get("response") is not None else "completion"
        if row.get(key) is None:
            raise BadRecord("missing_field", "need 'messages', or 'prompt' with 'response' or 'completion'")
        prompt, response = text_field(row, "prompt", allow_empty=True), text_field(row, key)
        prompt, response = align_forms(prompt, response)
    check_completion(response, "response")
    return SftExample(prompt, response, cond)


def tokenize(processor, ex: SftExample, raw: RawRecord) -> SftTokenized:
    prompt = processor.condition(ex.prompt, ex.cond)
    p, n_bos, r, _ = processor.response(prompt, ex.response)
    return SftTokenized(processor.seq.sequence(p, n_bos, r), *processor.ids(ex.cond), raw.epoch)


def make_builder(cfg, per_host_batch_size: int, pad_id: int):
    assemble = functools.partial(_assemble, with_slots=cfg.n_user_tokens > 0)
    return sequence_builder(cfg, per_host_batch_size, pad_id, 1, assemble)


def _assemble(layout: SequenceLayout, examples: list, *, with_slots) -> SftBatch:
    n_ex = layout.example_valid_E.shape[0]
    user = np.zeros(n_ex, np.int32)
    cond = np.zeros(n_ex, np.int32)
    for i, ex in enumerate(examples):
        user[i], cond[i] = ex.user_index, ex.condition_id
    laid = layout.rows
    return SftBatch(
        tokens_BxL=laid.tokens_BxL,
        positions_BxL=laid.positions_BxL,
        segment_ids_BxL=laid.segment_ids_BxL,
        loss_mask_BxL=laid.loss_mask_BxL,
        segment_example_index_BxS=layout.segment_example_BxS,
        example_valid_E=layout.example_valid_E,
        user_index_E=user,
        condition_id_E=cond,
        user_slot_mask_BxL=laid.user_slot_mask_BxL if with_slots else None,
    )


def example_of(cfg, sequences: tuple) -> SftTokenized:
    (sequence,) = sequences
    return SftTokenized(sequence, user_index=0, condition_id=0, epoch=0)


RECORD_TYPE = RecordType(
    name="sft",
    parse=parse,
    tokenize=tokenize,
    make_builder=make_builder,
    row_lengths=sequence_lengths,
    prompt_lengths=sequence_prompt_lengths,
    example_of=example_of,
    slots=1,
    packs=1,
)
