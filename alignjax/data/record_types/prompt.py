"""Prompts to sample from (`data.record_type: prompt`): online methods (MO-ODPO, online CUT)
generate the responses. A record is a `prompt`, with any conditioning fields."""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from alignjax.data.batching import Builder, pick_bucket
from alignjax.data.formats import Conditioning, Text, text_field
from alignjax.data.record_types.registry import RecordType
from alignjax.data.records import RawRecord


@dataclasses.dataclass(frozen=True)
class PromptExample:
    prompt: Text
    cond: Conditioning


@dataclasses.dataclass(frozen=True)
class PromptTokenized:
    prompt_ids: np.ndarray  # conditioned (weights, system, user info), BOS + slots
    n_bos: int  # 0 or 1: whether prompt_ids starts with BOS (the user slots follow it)
    unconditioned_ids: np.ndarray  # without the MO-ODPO weight sentence
    objective_weights: np.ndarray  # float32 [K], data.templates.weights order
    prompt: str  # the record's prompt as JSON, for re-conditioning online
    user_index: int
    condition_id: int
    epoch: int


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


def parse(row: dict, cond: Conditioning, cfg) -> PromptExample:
    return PromptExample(text_field(row, "prompt", allow_empty=True), cond)


def tokenize(processor, ex: PromptExample, raw: RawRecord) -> PromptTokenized:
    objectives = processor.cfg.templates.objectives
    conditioned_prompt = processor.condition(ex.prompt, ex.cond)
    plain_prompt = processor.condition(ex.prompt, dataclasses.replace(ex.cond, weights=None))
    if isinstance(conditioned_prompt, list) and isinstance(plain_prompt, str):
        # Same chat format as the conditioned prompt, just without the weights.
        plain_prompt = [{"role": "user", "content": plain_prompt}] if plain_prompt else []
    conditioned, n_bos = processor.prompt_ids(conditioned_prompt)
    unconditioned, _ = processor.prompt_ids(plain_prompt)
    weights = ex.cond.weights or {}
    return PromptTokenized(
        prompt_ids=conditioned,
        n_bos=n_bos,
        unconditioned_ids=unconditioned,
        objective_weights=np.asarray([weights.get(k, 0.0) for k in objectives], np.float32),
        prompt=json.dumps(ex.prompt, ensure_ascii=False),
        user_index=processor.ids(ex.cond)[0],
        condition_id=processor.ids(ex.cond)[1],
        epoch=raw.epoch,
    )


class PromptBuilder(Builder):
    def __init__(self, batch_size, pad_id, buckets, n_objectives):
        super().__init__(batch_size, pad_id)
        self.buckets = buckets
        self.n_objectives = n_objectives

    def build(self) -> PromptBatch:
        B = self.batch_size
        exs: list[PromptTokenized] = self.examples
        tokens, segments, positions = self._left_padded([e.prompt_ids for e in exs])
        plain_tokens, plain_segments, _ = self._left_padded([e.unconditioned_ids for e in exs])
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

    def _left_padded(self, seqs: list[np.ndarray]):
        B = self.batch_size
        length = pick_bucket(self.buckets, max((len(s) for s in seqs), default=1))
        tokens = np.full((B, length), self.pad_id, np.int32)
        segments = np.zeros((B, length), np.int32)
        positions = np.zeros((B, length), np.int32)
        for i, s in enumerate(seqs):
            tokens[i, length - len(s) :] = s
            segments[i, length - len(s) :] = 1
            positions[i, length - len(s) :] = np.arange(len(s))
        return tokens, segments, positions


def make_builder(cfg, per_host_batch_size: int, pad_id: int) -> PromptBuilder:
    return PromptBuilder(per_host_batch_size, pad_id, cfg.effective_buckets, len(cfg.templates.objectives))


def row_lengths(ex: PromptTokenized) -> tuple[int, ...]:
    return (len(ex.prompt_ids), len(ex.unconditioned_ids))


def example_of(cfg, sequences: tuple) -> PromptTokenized:
    """A prompt-only example: each sequence's `prompt_ids` (the conditioned, then the plain)."""
    conditioned, unconditioned = sequences
    return PromptTokenized(
        prompt_ids=conditioned.prompt_ids,
        n_bos=0,
        unconditioned_ids=unconditioned.prompt_ids,
        objective_weights=np.zeros(len(cfg.templates.objectives), np.float32),
        prompt="",
        user_index=0,
        condition_id=0,
        epoch=0,
    )


RECORD_TYPE = RecordType(
    name="prompt",
    parse=parse,
    tokenize=tokenize,
    make_builder=make_builder,
    row_lengths=row_lengths,
    prompt_lengths=row_lengths,  # a prompt record's rows are all prompt
    example_of=example_of,
    slots=2,
    trained=False,
)
