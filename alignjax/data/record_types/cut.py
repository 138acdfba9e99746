"""CUT's judged responses (`data.record_type: cut`): prompt, response, judgment, score.

A record without a judgment (or, with `loss.cut.positive_score`, one scored at least that)
is satisfactory: Align-P, prompt -> response. Otherwise Align-N (the judgment appended to
the prompt -> the response) and Misalign (the plain prompt -> the same response), cut to
the same response tokens so the two views line up token for token.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from alignjax.data.batching import Builder, layout_rows, pick_bucket
from alignjax.data.formats import Conditioning, Text, align_forms, check_completion, text_field
from alignjax.data.record_types.registry import RecordType
from alignjax.data.records import BadRecord, RawRecord
from alignjax.data.tokenize import TokenizedSequence


@dataclasses.dataclass(frozen=True)
class CutExample:
    prompt: Text
    response: Text
    judgment: str | None  # None: satisfactory
    score: float | None
    cond: Conditioning


@dataclasses.dataclass(frozen=True)
class CutTokenized:
    """Align-P (satisfactory) or Align-N (`judged`), and the Misalign view."""

    judged: TokenizedSequence
    misaligned: TokenizedSequence | None  # None when satisfactory
    score: float  # NaN when absent
    condition_id: int
    epoch: int


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


def parse(row: dict, cond: Conditioning, cfg) -> CutExample:
    prompt, response = text_field(row, "prompt", allow_empty=True), text_field(row, "response")
    prompt, response = align_forms(prompt, response)
    check_completion(response, "response")
    judgment = row.get("judgment")
    if judgment is not None and not isinstance(judgment, str):
        raise BadRecord("wrong_type", f"'judgment' must be a string or null, got {type(judgment).__name__}")
    score = row.get("score")
    if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
        raise BadRecord("wrong_type", f"'score' must be a number or null, got {type(score).__name__}")
    return CutExample(prompt, response, judgment or None, None if score is None else float(score), cond)


def tokenize(processor, ex: CutExample, raw: RawRecord) -> CutTokenized:
    score = np.nan if ex.score is None else ex.score
    threshold = processor.cfg.cut_positive_score
    satisfactory = ex.judgment is None or (
        ex.score is not None and threshold is not None and ex.score >= threshold
    )
    _, condition_id = processor.ids(ex.cond)
    plain = processor.condition(ex.prompt, ex.cond)
    p_m, n_bos, r_m, _ = processor.response(plain, ex.response)
    seq = processor.seq
    if satisfactory:
        return CutTokenized(seq.sequence(p_m, n_bos, r_m), None, score, condition_id, raw.epoch)
    judged = processor.condition(ex.prompt, ex.cond, judgment=ex.judgment)
    p_j, _, r_j, _ = processor.response(judged, ex.response)
    # Same response tokens, cut to the same length, so the two views line up
    # token for token (the CUT ratio p(y_t|x,j) / p(y_t|x) needs that).
    budget = min(seq.response_budget(p_j), seq.response_budget(p_m))
    return CutTokenized(
        seq.sequence(p_j, n_bos, r_j, budget=budget),
        seq.sequence(p_m, n_bos, r_m, budget=budget),
        score,
        condition_id,
        raw.epoch,
    )


class CutBuilder(Builder):
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


def make_builder(cfg, per_host_batch_size: int, pad_id: int) -> CutBuilder:
    return CutBuilder(per_host_batch_size, pad_id, cfg.effective_buckets)


def row_lengths(ex: CutTokenized) -> tuple[int, ...]:
    return (len(ex.judged), len(ex.misaligned) if ex.misaligned is not None else 0)


def prompt_lengths(ex: CutTokenized) -> tuple[int, ...]:
    return tuple(len(s.prompt_ids) for s in (ex.judged, ex.misaligned) if s is not None)


def example_of(cfg, sequences: tuple) -> CutTokenized:
    judged, misaligned = sequences
    return CutTokenized(judged, misaligned, score=float("nan"), condition_id=0, epoch=0)


RECORD_TYPE = RecordType(
    name="cut",
    parse=parse,
    tokenize=tokenize,
    make_builder=make_builder,
    row_lengths=row_lengths,
    prompt_lengths=prompt_lengths,
    example_of=example_of,
    slots=2,
)
