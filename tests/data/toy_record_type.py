"""A record type written the way a user adds one: this module, plus one `register(RECORD_TYPE)` line.

Scored responses (reward-weighted regression's data): a `prompt`, a `response` and a finite
`reward`. A batch holds one response per row (padded or packed) and each example's reward.
"""

import dataclasses
import math

import numpy as np

from alignjax.data.batching import (
    SequenceLayout,
    sequence_builder,
    sequence_lengths,
    sequence_prompt_lengths,
)
from alignjax.data.formats import Conditioning, Text, align_forms, check_completion, text_field
from alignjax.data.record_types import RecordType
from alignjax.data.records import BadRecord, RawRecord
from alignjax.data.tokenize import TokenizedSequence


@dataclasses.dataclass(frozen=True)
class ScoredExample:
    prompt: Text
    response: Text
    reward: float
    cond: Conditioning


@dataclasses.dataclass(frozen=True)
class ScoredTokenized:
    sequence: TokenizedSequence
    reward: float
    epoch: int

    @property
    def sequences(self) -> tuple[TokenizedSequence, ...]:
        return (self.sequence,)


@dataclasses.dataclass(frozen=True)
class ScoredBatch:
    tokens_BxL: np.ndarray  # int32
    positions_BxL: np.ndarray  # int32
    segment_ids_BxL: np.ndarray  # int32
    loss_mask_BxL: np.ndarray  # int32
    segment_example_index_BxS: np.ndarray  # int32
    reward_E: np.ndarray  # float32
    example_valid_E: np.ndarray  # int32


def parse(row: dict, cond: Conditioning, cfg) -> ScoredExample:
    prompt, response = align_forms(text_field(row, "prompt", allow_empty=True), text_field(row, "response"))
    check_completion(response, "response")
    reward = row.get("reward")
    if isinstance(reward, bool) or not isinstance(reward, (int, float)) or not math.isfinite(reward):
        reason = "missing_field" if reward is None else "wrong_type"
        raise BadRecord(reason, f"'reward' must be a finite number, got {reward!r}")
    return ScoredExample(prompt, response, float(reward), cond)


def tokenize(processor, ex: ScoredExample, raw: RawRecord) -> ScoredTokenized:
    prompt = processor.condition(ex.prompt, ex.cond)
    prompt_ids, n_bos, response_ids, _ = processor.response(prompt, ex.response)
    return ScoredTokenized(processor.seq.sequence(prompt_ids, n_bos, response_ids), ex.reward, raw.epoch)


def _assemble(layout: SequenceLayout, examples: list) -> ScoredBatch:
    reward_E = np.zeros(layout.example_valid_E.shape[0], np.float32)
    for i, ex in enumerate(examples):
        reward_E[i] = ex.reward
    return ScoredBatch(
        tokens_BxL=layout.rows.tokens_BxL,
        positions_BxL=layout.rows.positions_BxL,
        segment_ids_BxL=layout.rows.segment_ids_BxL,
        loss_mask_BxL=layout.rows.loss_mask_BxL,
        segment_example_index_BxS=layout.segment_example_BxS,
        reward_E=reward_E,
        example_valid_E=layout.example_valid_E,
    )


def make_builder(cfg, per_host_batch_size: int, pad_id: int):
    return sequence_builder(cfg, per_host_batch_size, pad_id, 1, _assemble)


def example_of(cfg, sequences: tuple) -> ScoredTokenized:
    (sequence,) = sequences
    return ScoredTokenized(sequence, reward=0.0, epoch=0)


RECORD_TYPE = RecordType(
    name="scored",
    parse=parse,
    tokenize=tokenize,
    make_builder=make_builder,
    row_lengths=sequence_lengths,
    prompt_lengths=sequence_prompt_lengths,
    example_of=example_of,
    slots=1,
    packs=1,
)
